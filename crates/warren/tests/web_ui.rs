//! The web UI's static files against a real Warren: served without auth at `/` and `/ui/...`
//! with their content types; the API still needs auth, and a request from the UI (with
//! `X-Requested-With: XMLHttpRequest`) gets its 401 without a browser challenge. The pages
//! themselves are driven in a real browser by `ui-tests/run.sh`.

mod common;

use common::Broker;

fn base(broker: &Broker) -> Option<String> {
    if Broker::is_external() {
        eprintln!("note: skipped, the web UI of an external broker is not known here");
        return None;
    }
    Some(format!("http://{}", broker.http_addr().expect("a spawned broker listens for HTTP")))
}

#[tokio::test]
async fn static_files_are_served_without_auth() {
    let broker = Broker::start();
    let Some(base) = base(&broker) else { return };
    let client = reqwest::Client::new();
    for (path, kind, needle) in [
        ("/", "text/html", "<script type=\"module\" src=\"/ui/app.js\">"),
        ("/ui/", "text/html", "<title>Warren management</title>"),
        ("/ui/index.html", "text/html", "<title>Warren management</title>"),
        ("/ui/app.js", "text/javascript", "export function flash"),
        ("/ui/pages.js", "text/javascript", "export function dataTable"),
        ("/ui/style.css", "text/css", ":root"),
    ] {
        let resp = client.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().expect("ascii").to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(resp.text().await.expect("body").contains(needle), "{path}");
    }
    let missing = client.get(format!("{base}/ui/nothing.js")).send().await.expect("GET");
    assert_eq!(missing.status().as_u16(), 404);
}

#[tokio::test]
async fn api_401_has_a_challenge_except_for_the_ui() {
    let broker = Broker::start();
    let Some(base) = base(&broker) else { return };
    let client = reqwest::Client::new();
    let plain =
        client.get(format!("{base}/api/overview")).basic_auth("guest", Some("wrong")).send().await.expect("GET");
    assert_eq!(plain.status().as_u16(), 401);
    assert!(plain.headers().contains_key("www-authenticate"));
    let from_ui = client
        .get(format!("{base}/api/overview"))
        .basic_auth("guest", Some("wrong"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .expect("GET");
    assert_eq!(from_ui.status().as_u16(), 401);
    assert!(!from_ui.headers().contains_key("www-authenticate"));
    let ok = client
        .get(format!("{base}/api/whoami"))
        .basic_auth("guest", Some("guest"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .expect("GET");
    assert_eq!(ok.status().as_u16(), 200);
}
