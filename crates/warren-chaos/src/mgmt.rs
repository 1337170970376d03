//! The management API, as the harness reads it: a queue's leader, what each node lists.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
}

impl Api {
    pub fn new() -> Api {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Api { client }
    }

    /// GET `path` on the node whose HTTP listener is `addr`: the status and the JSON (`Null` for
    /// a body that is not JSON); `None` when the node did not answer.
    pub async fn get(&self, addr: &str, path: &str) -> Option<(u16, Value)> {
        let response =
            self.client.get(format!("http://{addr}{path}")).basic_auth("guest", Some("guest")).send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `method` `path` with a JSON `body` on the node whose HTTP listener is `addr`: the
    /// status, `None` when the node did not answer.
    pub async fn send(&self, method: reqwest::Method, addr: &str, path: &str, body: Option<Value>) -> Option<u16> {
        self.send_for(method, addr, path, body).await.map(|(status, _)| status)
    }

    /// As [`Api::send`], with the answer's JSON (`Null` for one that is not JSON).
    pub async fn send_for(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut request =
            self.client.request(method, format!("http://{addr}{path}")).basic_auth("guest", Some("guest"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// GET `path` as text (/metrics), when the node answers 200.
    pub async fn text(&self, addr: &str, path: &str) -> Option<String> {
        let response =
            self.client.get(format!("http://{addr}{path}")).basic_auth("guest", Some("guest")).send().await.ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        response.text().await.ok()
    }

    /// `GET /api/queues/%2F/{queue}` through `addr`: the queue's JSON when it exists.
    pub async fn queue(&self, addr: &str, queue: &str) -> Option<Value> {
        match self.get(addr, &format!("/api/queues/%2F/{}", encode(queue))).await {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The queue's leader as `addr` reports it (the `leader` field of the queue's JSON, a node
    /// name), if it reports one.
    pub async fn leader(&self, addr: &str, queue: &str) -> Option<String> {
        self.queue(addr, queue).await?.get("leader")?.as_str().map(str::to_owned)
    }

    /// `/api/nodes` through `addr`: every node's name and whether it is running.
    pub async fn nodes(&self, addr: &str) -> Option<Vec<(String, bool)>> {
        let (status, v) = self.get(addr, "/api/nodes").await?;
        if status != 200 {
            return None;
        }
        Some(
            v.as_array()?
                .iter()
                .filter_map(|n| Some((n.get("name")?.as_str()?.to_owned(), n.get("running")?.as_bool()?)))
                .collect(),
        )
    }

    /// The durable topology `addr` lists: queues, exchanges and bindings, each as one line.
    pub async fn topology(&self, addr: &str) -> Option<Topology> {
        let list = |v: Value| v.as_array().cloned().unwrap_or_default();
        let (qs, queues) = self.get(addr, "/api/queues").await?;
        let (xs, exchanges) = self.get(addr, "/api/exchanges").await?;
        let (bs, bindings) = self.get(addr, "/api/bindings").await?;
        if qs != 200 || xs != 200 || bs != 200 {
            return None;
        }
        let durable = |v: &Value| v.get("durable").and_then(Value::as_bool).unwrap_or(false);
        let s = |v: &Value, k: &str| v.get(k).map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned));
        let queues = list(queues)
            .iter()
            .filter(|q| durable(q))
            .map(|q| {
                format!(
                    "{}/{} type={} args={}",
                    s(q, "vhost").unwrap_or_default(),
                    s(q, "name").unwrap_or_default(),
                    s(q, "type").unwrap_or_default(),
                    q.get("arguments").map(canonical).unwrap_or_default()
                )
            })
            .collect();
        let exchanges = list(exchanges)
            .iter()
            .filter(|x| durable(x))
            .map(|x| {
                format!(
                    "{}/{} type={}",
                    s(x, "vhost").unwrap_or_default(),
                    s(x, "name").unwrap_or_default(),
                    s(x, "type").unwrap_or_default()
                )
            })
            .collect();
        let bindings = list(bindings)
            .iter()
            .map(|b| {
                format!(
                    "{}/{} -> {} {} key={:?} args={}",
                    s(b, "vhost").unwrap_or_default(),
                    s(b, "source").unwrap_or_default(),
                    s(b, "destination_type").unwrap_or_default(),
                    s(b, "destination").unwrap_or_default(),
                    s(b, "routing_key").unwrap_or_default(),
                    b.get("arguments").map(canonical).unwrap_or_default()
                )
            })
            .collect();
        Some(Topology { queues, exchanges, bindings })
    }
}

/// A node's durable topology, one line per object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub queues: BTreeSet<String>,
    pub exchanges: BTreeSet<String>,
    pub bindings: BTreeSet<String>,
}

/// JSON text with every object's keys sorted, so that two nodes' answers compare equal
/// whatever order each wrote them in.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[k.as_str()])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode("chaos-q_1"), "chaos-q_1");
        assert_eq!(super::encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"y":2,"x":1}],"c":null}}"#).expect("JSON");
        assert_eq!(super::canonical(&a), r#"{"a":{"c":null,"d":[1,{"x":1,"y":2}]},"b":1}"#);
    }
}
