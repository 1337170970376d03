//! RabbitMQ's paging of a listing: `page`, `page_size`, `name` with `use_regex`, `sort` and
//! `sort_reverse`, with RabbitMQ 3.10's answers (checked against rabbitmq-server 3.10.8).
//!
//! Without `page` the answer is the plain array, sorted (`sort`, `sort_reverse`) but never
//! filtered: RabbitMQ ignores `name` then. With `page` it is one page of the filtered list in
//! an object (`filtered_count`, `item_count`, `items`, `page`, `page_count`, `page_size`,
//! `total_count`). Items come in the listing's own order (vhost, then name, by bytes); `sort`
//! names a field (`messages`, or a path such as `message_stats.publish`) and sorts stably by
//! it, ascending; `sort_reverse=true` then reverses the whole list.

use super::ApiError;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Items on a page when `page_size` is not given (RabbitMQ's default).
pub(crate) const PAGE_SIZE_DEFAULT: i64 = 100;

/// The largest `page_size` RabbitMQ accepts: a page is built whole in memory, as JSON.
pub(crate) const PAGE_SIZE_MAX: i64 = 500;

/// What RabbitMQ answers to a number it cannot parse or a `name` regex it cannot compile.
const INVALID: &str = "Pagination parameters are invalid";

/// The paging parameters of one request.
pub(crate) struct Paging {
    page: Option<Page>,
    /// The field to sort by (`None`: the listing's own order).
    sort: Option<String>,
    sort_reverse: bool,
}

struct Page {
    /// 1-based.
    number: i64,
    size: i64,
    name: Option<NameFilter>,
}

impl Page {
    /// The page's number and size, and how many filtered items come before it; a page that
    /// starts past the end is refused. Both are at least 1 here; RabbitMQ refuses only a page
    /// that starts past the end, so the page just after a full last page is answered, empty.
    fn window(&self, filtered_count: usize) -> Result<(u64, u64, usize), ApiError> {
        let (number, size) = (self.number as u64, self.size as u64);
        let skip = (number - 1).saturating_mul(size);
        if skip > filtered_count as u64 {
            return Err(ApiError::Invalid {
                error: "page_out_of_range",
                reason: format!("Page out of range, page: {number} page size: {size}, len: {filtered_count}"),
            });
        }
        Ok((number, size, skip as usize))
    }
}

/// RabbitMQ matches `name` case-insensitively, as a substring or (`use_regex=true`) a regex.
enum NameFilter {
    Substring(String),
    Regex(regex::Regex),
}

impl NameFilter {
    fn matches(&self, name: &str) -> bool {
        match self {
            NameFilter::Substring(lower) => name.to_lowercase().contains(lower.as_str()),
            NameFilter::Regex(re) => re.is_match(name),
        }
    }
}

/// A number parameter: absent, or an integer (a sign allowed, nothing else).
fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| ApiError::BadRequest(INVALID.into())),
    }
}

impl Paging {
    /// Reads the parameters as RabbitMQ does: numbers must parse even without `page`; their
    /// ranges, and `name`, only count with it.
    pub(crate) fn from_query(query: &HashMap<String, String>) -> Result<Paging, ApiError> {
        let (page, page_size) = (number(query, "page")?, number(query, "page_size")?);
        // RabbitMQ 3.10 crashes (500) on any other value; a 400 says what is wrong instead.
        let sort_reverse = match query.get("sort_reverse").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::BadRequest("sort_reverse must be true or false".into())),
        };
        let sort = query.get("sort").filter(|s| !s.is_empty()).cloned();
        let Some(number) = page else { return Ok(Paging { page: None, sort, sort_reverse }) };
        if number < 1 || page_size.is_some_and(|s| !(1..=PAGE_SIZE_MAX).contains(&s)) {
            let size = page_size.map_or_else(|| "undefined".to_string(), |s| s.to_string());
            return Err(ApiError::Invalid {
                error: "invalid_pagination_parameters",
                reason: format!("Invalid pagination parameters: page number {number}, page size {size}"),
            });
        }
        let name = match query.get("name").filter(|n| !n.is_empty()) {
            None => None,
            Some(n) if query.get("use_regex").is_some_and(|r| r == "true") => Some(NameFilter::Regex(
                regex::RegexBuilder::new(n)
                    .case_insensitive(true)
                    .build()
                    .map_err(|_| ApiError::BadRequest(INVALID.into()))?,
            )),
            Some(n) => Some(NameFilter::Substring(n.to_lowercase())),
        };
        let page = Page { number, size: page_size.unwrap_or(PAGE_SIZE_DEFAULT), name };
        Ok(Paging { page: Some(page), sort, sort_reverse })
    }

    /// The answer for `items` (in the listing's own order): the sorted array, or one page.
    /// [`Paging::answer`] for typed rows, serialized directly (no JSON tree per row) unless a
    /// sort by a field asks for one. `name` gives a row's name, for the page's name filter.
    pub(crate) fn answer_rows<T: serde::Serialize>(
        &self,
        mut rows: Vec<T>,
        name: impl Fn(&T) -> &str,
    ) -> Result<Response, ApiError> {
        if self.sort.is_some() {
            let items = rows.iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).collect();
            return self.answer(items);
        }
        if self.sort_reverse {
            rows.reverse();
        }
        let Some(page) = &self.page else { return Ok(Json(rows).into_response()) };
        let total_count = rows.len();
        if let Some(filter) = &page.name {
            rows.retain(|r| filter.matches(name(r)));
        }
        let filtered_count = rows.len();
        let (number, size, skip) = page.window(filtered_count)?;
        let items: Vec<T> = rows.into_iter().skip(skip).take(size as usize).collect();
        /// Fields in alphabetical order, as the untyped answer's.
        #[derive(serde::Serialize)]
        struct Rows<T> {
            filtered_count: usize,
            item_count: usize,
            items: Vec<T>,
            page: u64,
            page_count: u64,
            page_size: u64,
            total_count: usize,
        }
        Ok(Json(Rows {
            filtered_count,
            item_count: items.len(),
            items,
            page: number,
            page_count: (filtered_count as u64).div_ceil(size),
            page_size: size,
            total_count,
        })
        .into_response())
    }

    pub(crate) fn answer(&self, mut items: Vec<Value>) -> Result<Response, ApiError> {
        if let Some(sort) = &self.sort {
            let path: Vec<&str> = sort.split('.').collect();
            items.sort_by(|a, b| compare(field(a, &path), field(b, &path)));
        }
        if self.sort_reverse {
            items.reverse();
        }
        let Some(page) = &self.page else { return Ok(Json(Value::Array(items)).into_response()) };
        let total_count = items.len();
        if let Some(filter) = &page.name {
            items.retain(|item| filter.matches(item["name"].as_str().unwrap_or_default()));
        }
        let filtered_count = items.len();
        let (number, size, skip) = page.window(filtered_count)?;
        let items: Vec<Value> = items.into_iter().skip(skip).take(size as usize).collect();
        Ok(Json(json!({
            "filtered_count": filtered_count,
            "item_count": items.len(),
            "items": items,
            "page": number,
            "page_count": (filtered_count as u64).div_ceil(size),
            "page_size": size,
            "total_count": total_count,
        }))
        .into_response())
    }
}

/// The value at a dotted path (`message_stats.publish`), if there is one.
fn field<'a>(item: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, key| v.get(key))
}

/// Erlang's term order, which RabbitMQ sorts by, on JSON values: absent (and null) first, then
/// numbers, booleans, objects, arrays, and strings last, strings by their bytes.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Number(_)) => 1,
            Some(Value::Bool(_)) => 2,
            Some(Value::Object(_)) => 3,
            Some(Value::Array(_)) => 4,
            Some(Value::String(_)) => 5,
        }
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.iter().zip(y).map(|(x, y)| compare(Some(x), Some(y))).find(|o| o.is_ne()).unwrap_or(x.len().cmp(&y.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn page_size_at_the_limit_and_one_past() {
        let at = query(&[("page", "1"), ("page_size", "500")]);
        assert!(Paging::from_query(&at).is_ok());
        let past = query(&[("page", "1"), ("page_size", "501")]);
        assert!(matches!(Paging::from_query(&past), Err(ApiError::Invalid { .. })));
        // Without `page` the size is parsed but not checked, as in RabbitMQ.
        assert!(Paging::from_query(&query(&[("page_size", "501")])).is_ok());
        assert!(matches!(Paging::from_query(&query(&[("page_size", "x")])), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn compares_in_erlang_term_order() {
        let (n, s, null) = (json!(2), json!("a"), Value::Null);
        assert_eq!(compare(None, Some(&n)), Ordering::Less);
        assert_eq!(compare(Some(&null), Some(&n)), Ordering::Less);
        assert_eq!(compare(Some(&n), Some(&s)), Ordering::Less);
        assert_eq!(compare(Some(&json!(10)), Some(&json!(9.5))), Ordering::Greater);
        assert_eq!(compare(Some(&json!("B")), Some(&json!("a"))), Ordering::Less);
    }
}
