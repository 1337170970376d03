//! Access control over the management HTTP API against a real Warren: `rabbitmq_http_client`
//! (the library of `rabbitmqadmin` v2) creates a vhost, a user with tags and permissions, and an
//! AMQP client of that user is let in or refused accordingly; plain HTTP checks RabbitMQ 3.10's
//! shapes, status codes and error bodies, and who may change what.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, Broker};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::password_hashing::{base64_encoded_salted_password_hash_sha256, salt};
use rabbitmq_http_client::requests::{Permissions, TopicPermissions, UserParams, VirtualHostParams};
use reqwest::Method;
use serde_json::{json, Value};

fn http_base(broker: &Broker) -> Option<String> {
    if Broker::is_external() {
        eprintln!("note: skipped, the management API of an external broker is not known here");
        return None;
    }
    Some(format!("http://{}", broker.http_addr().expect("a spawned broker listens for HTTP")))
}

/// One request as `user` (None: without credentials); the status and the JSON body (Null
/// when empty or not JSON).
async fn call_as(
    base: &str,
    user: Option<(&str, &str)>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("HTTP body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(base, Some(("guest", "guest")), method, path, body).await
}

async fn try_connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().expect("a JSON object").keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_http_client_sets_up_access_and_amqp_follows_it() {
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let rc = Client::new(format!("{base}/api"), "guest", "guest");
    let (vhost, user) = (unique("acc-vh"), unique("acc-user"));

    rc.create_vhost(&VirtualHostParams::named(&vhost)).await.expect("create vhost");
    assert!(rc.list_vhosts().await.expect("list vhosts").iter().any(|v| v.name == vhost));
    let hash = base64_encoded_salted_password_hash_sha256(&salt(), "s3cret");
    rc.create_user(&UserParams { name: &user, password_hash: &hash, tags: "management,custom" })
        .await
        .expect("create user");
    let info = rc.get_user(&user).await.expect("get user");
    assert_eq!(info.tags.0, ["management", "custom"]);
    assert!(rc.list_users_without_permissions().await.expect("without permissions").iter().any(|u| u.name == user));

    // No permissions in the vhost yet: connection.open is refused.
    let url = broker.amqp_url_with(&user, "s3cret", &vhost);
    assert!(try_connect(&url).await.is_err(), "a user without permissions cannot open the vhost");
    assert!(try_connect(&broker.amqp_url_with(&user, "wrong", &vhost)).await.is_err(), "a wrong password fails");

    let perms = Permissions { user: &user, vhost: &vhost, configure: "^app\\.", write: ".*", read: ".*" };
    rc.declare_permissions(&perms).await.expect("set permissions");
    let listed = rc.list_permissions_of(&user).await.expect("permissions of the user");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].vhost.as_str(), listed[0].configure.as_str()), (vhost.as_str(), "^app\\."));
    let topic = TopicPermissions { user: &user, vhost: &vhost, exchange: "amq.topic", write: "^ok\\.", read: ".*" };
    rc.declare_topic_permissions(&topic).await.expect("set topic permissions");
    assert_eq!(rc.list_topic_permissions_of(&user).await.expect("topic permissions").len(), 1);

    // Now the user gets in, may configure `app.*` only.
    let conn = connect_url(&url).await;
    let ch = channel(&conn).await;
    let options = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    try_declare_with(&ch, "app.q", options, FieldTable::default()).await.expect("app.q is allowed");
    assert_code(try_declare_with(&ch, "other.q", options, FieldTable::default()).await, 403);

    // A management user sees its own connections only; the administrator sees all.
    let guest_conn = connect(&broker).await;
    let (_, own_conns) = call_as(&base, Some((&user, "s3cret")), Method::GET, "/api/connections", None).await;
    let users_of = |v: &Value| -> Vec<String> {
        v.as_array().expect("a list").iter().filter_map(|c| c["user"].as_str().map(str::to_owned)).collect()
    };
    assert_eq!(users_of(&own_conns), [user.as_str()]);
    let (_, all_conns) = call_as(&base, Some(("guest", "guest")), Method::GET, "/api/connections", None).await;
    assert_eq!(users_of(&all_conns).len(), 2);
    let (_, in_vhost) =
        call_as(&base, Some(("guest", "guest")), Method::GET, &format!("/api/vhosts/{vhost}/connections"), None).await;
    assert_eq!(users_of(&in_vhost), [user.as_str()], "the guest connection is in another vhost");
    close(&guest_conn).await;

    // The user's own view: whoami with its tags; it may not create users (not administrator).
    let own = Client::new(format!("{base}/api"), user.as_str(), "s3cret");
    let me = own.current_user().await.expect("whoami as the user");
    assert_eq!(me.tags.0, ["management", "custom"]);
    let denied = own.create_user(&UserParams { name: "intruder", password_hash: &hash, tags: "administrator" }).await;
    assert!(denied.is_err(), "a management user cannot create users");
    assert!(rc.get_user("intruder").await.is_err(), "no user was created");
    assert_eq!(
        own.list_vhosts().await.expect("own vhosts").iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        [vhost.as_str()]
    );

    // Deleting the user closes its connection (320 CONNECTION_FORCED) and it cannot come back.
    rc.delete_user(&user, false).await.expect("delete user");
    eventually("the deleted user's connection to close", || async { !conn.status().connected() }).await;
    assert!(try_connect(&url).await.is_err(), "a deleted user cannot connect");
    rc.delete_vhost(&vhost, false).await.expect("delete vhost");
    assert!(rc.get_vhost(&vhost).await.is_err(), "the vhost is gone");
}

#[tokio::test]
async fn access_endpoints_have_rabbitmq_shapes_and_errors() {
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let (vhost, user) = (unique("acc-vh"), unique("acc-user"));
    let enc = |s: &str| s.replace('/', "%2F");

    // Vhosts.
    let (status, body) = call(&base, Method::GET, "/api/vhosts/%2F", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&body),
        ["cluster_state", "default_queue_type", "description", "metadata", "name", "tags", "tracing"]
    );
    assert_eq!(body["name"], "/");
    let not_found = json!({"error": "Object Not Found", "reason": "Not Found"});
    assert_eq!(call(&base, Method::GET, "/api/vhosts/nope", None).await, (404, not_found.clone()));
    assert_eq!(call(&base, Method::PUT, &format!("/api/vhosts/{vhost}"), None).await.0, 201);
    assert_eq!(call(&base, Method::PUT, &format!("/api/vhosts/{vhost}"), Some(json!({}))).await.0, 204);

    // Users: tags are required, as a string or a list.
    let path = format!("/api/users/{user}");
    let bad = |reason: &str| json!({"error": "bad_request", "reason": reason});
    assert_eq!(call(&base, Method::PUT, &path, Some(json!({"password": "pw"}))).await, (400, bad("tags_not_present")));
    let created = call(&base, Method::PUT, &path, Some(json!({"password": "pw", "tags": ["monitoring"]}))).await;
    assert_eq!(created.0, 201);
    let updated = call(&base, Method::PUT, &path, Some(json!({"tags": "management, custom"}))).await;
    assert_eq!(updated.0, 204);
    let (status, u) = call(&base, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&u), ["hashing_algorithm", "limits", "name", "password_hash", "tags"]);
    assert_eq!(u["tags"], json!(["management", "custom"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    // As in RabbitMQ 3.10, a PUT without a password clears it: the user cannot log in.
    assert_eq!(u["password_hash"], "");
    let locked = call_as(&base, Some((&user, "pw")), Method::GET, "/api/whoami", None).await;
    assert_eq!(locked.0, 401);
    let with_password = json!({"password": "pw", "tags": ["management", "custom"]});
    assert_eq!(call(&base, Method::PUT, &path, Some(with_password)).await.0, 204);
    let (_, me) = call_as(&base, Some((&user, "pw")), Method::GET, "/api/whoami", None).await;
    assert_eq!(me, json!({"name": user, "tags": ["management", "custom"]}));
    assert_eq!(call(&base, Method::GET, "/api/users/nope", None).await, (404, not_found.clone()));

    // Permissions.
    let perm_path = format!("/api/permissions/{vhost}/{user}");
    let missing = call(&base, Method::PUT, &perm_path, Some(json!({"configure": ".*", "write": ".*"}))).await;
    assert_eq!(missing, (400, bad("[{key_missing,read}]")));
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let nobody = call(&base, Method::PUT, &format!("/api/permissions/{vhost}/nope"), Some(all.clone())).await;
    assert_eq!(nobody, (400, bad("vhost_or_user_not_found")));
    assert_eq!(call(&base, Method::PUT, &perm_path, Some(all.clone())).await.0, 201);
    assert_eq!(call(&base, Method::PUT, &perm_path, Some(all.clone())).await.0, 204);
    let (status, p) = call(&base, Method::GET, &perm_path, None).await;
    assert_eq!(
        (status, p),
        (200, json!({"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}))
    );
    // The vhost's creator got full permissions in it, as in RabbitMQ.
    let (_, in_vhost) = call(&base, Method::GET, &format!("/api/vhosts/{vhost}/permissions"), None).await;
    let mut who: Vec<&str> = in_vhost.as_array().expect("list").iter().filter_map(|p| p["user"].as_str()).collect();
    who.sort();
    let mut expected = vec!["guest", user.as_str()];
    expected.sort();
    assert_eq!(who, expected);
    let (_, global) = call(&base, Method::GET, "/api/permissions", None).await;
    assert!(global.as_array().expect("list").iter().any(|p| p["user"] == user.as_str()));

    // Topic permissions: a list per (vhost, user); 404 once cleared.
    let topic_path = format!("/api/topic-permissions/{vhost}/{user}");
    let no_exchange = call(&base, Method::PUT, &topic_path, Some(json!({"write": "^a", "read": ".*"}))).await;
    assert_eq!(no_exchange, (400, bad("[{key_missing,exchange}]")));
    let topic = json!({"exchange": "amq.topic", "write": "^a", "read": ".*"});
    assert_eq!(call(&base, Method::PUT, &topic_path, Some(topic)).await.0, 201);
    let (status, t) = call(&base, Method::GET, &topic_path, None).await;
    assert_eq!(status, 200);
    assert_eq!(t, json!([{"user": user, "vhost": vhost, "exchange": "amq.topic", "write": "^a", "read": ".*"}]));
    assert_eq!(call(&base, Method::DELETE, &topic_path, None).await.0, 204);
    assert_eq!(call(&base, Method::DELETE, &topic_path, None).await, (404, not_found.clone()));

    // A management user: sees its vhosts, may not list or change users, vhosts, permissions.
    let as_user = Some((user.as_str(), "pw"));
    let (status, vhosts) = call_as(&base, as_user, Method::GET, "/api/vhosts", None).await;
    assert_eq!(status, 200);
    assert_eq!(vhosts.as_array().expect("list").iter().map(|v| v["name"].clone()).collect::<Vec<_>>(), [json!(vhost)]);
    let not_admin = json!({"error": "not_authorised", "reason": "Not administrator user"});
    for (method, path, body) in [
        (Method::GET, "/api/users".to_string(), None),
        (Method::PUT, "/api/users/intruder".to_string(), Some(json!({"password": "x", "tags": "administrator"}))),
        (Method::DELETE, format!("/api/users/{user}"), None),
        (Method::PUT, "/api/vhosts/mine".to_string(), None),
        (Method::PUT, format!("/api/permissions/%2F/{user}"), Some(all.clone())),
        (Method::GET, "/api/permissions".to_string(), None),
    ] {
        let answer = call_as(&base, as_user, method.clone(), &path, body).await;
        assert_eq!(answer, (401, not_admin.clone()), "{method} {path}");
    }
    assert_eq!(call(&base, Method::GET, "/api/users/intruder", None).await.0, 404, "nothing was created");
    for path in ["/api/definitions".to_string(), format!("/api/definitions/{vhost}")] {
        let answer = call_as(&base, as_user, Method::GET, &path, None).await;
        assert_eq!(answer, (401, not_admin.clone()), "exports hold password hashes: {path}");
    }
    // Queues, exchanges, bindings: only in its vhosts.
    let (mine, theirs) = (unique("acc-mine"), unique("acc-theirs"));
    assert_eq!(call(&base, Method::PUT, &format!("/api/queues/{vhost}/{mine}"), Some(json!({}))).await.0, 201);
    assert_eq!(call(&base, Method::PUT, &format!("/api/queues/%2F/{theirs}"), Some(json!({}))).await.0, 201);
    for listing in ["/api/queues", "/api/exchanges", "/api/bindings"] {
        let (status, items) = call_as(&base, as_user, Method::GET, listing, None).await;
        assert_eq!(status, 200);
        let items = items.as_array().expect("a list");
        assert!(!items.is_empty(), "{listing} shows the user's vhost");
        assert!(items.iter().all(|i| i["vhost"] == vhost.as_str()), "{listing} shows only the user's vhost: {items:?}");
    }
    let (_, queues) = call_as(&base, as_user, Method::GET, "/api/queues", None).await;
    assert_eq!(queues.as_array().expect("list").iter().filter(|q| q["name"] == mine.as_str()).count(), 1);
    let elsewhere = call_as(&base, as_user, Method::GET, &format!("/api/queues/%2F/{theirs}"), None).await;
    let not_vhost = json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"});
    assert_eq!(elsewhere, (401, not_vhost));
    let own_vhost = call_as(&base, as_user, Method::GET, &format!("/api/queues/{vhost}/{mine}"), None).await;
    assert_eq!(own_vhost.0, 200);
    assert_eq!(call(&base, Method::DELETE, &format!("/api/queues/%2F/{theirs}"), None).await.0, 204);

    // Policies: changing one needs the policymaker tag and permissions in the vhost.
    let policy = json!({"pattern": "^x", "definition": {"max-length": 1}});
    let not_object = json!({"error": "not_authorised", "reason": "User not authorised to access object"});
    let own_policy = format!("/api/policies/{vhost}/p");
    let answer = call_as(&base, as_user, Method::PUT, &own_policy, Some(policy.clone())).await;
    assert_eq!(answer, (401, not_object.clone()), "a management user is no policymaker");
    let put_tags = json!({"password": "pw", "tags": "management,policymaker"});
    assert_eq!(call(&base, Method::PUT, &path, Some(put_tags)).await.0, 204);
    assert_eq!(call_as(&base, as_user, Method::PUT, &own_policy, Some(policy.clone())).await.0, 201);
    let elsewhere = call_as(&base, as_user, Method::PUT, "/api/policies/%2F/p", Some(policy.clone())).await;
    assert_eq!(elsewhere, (401, not_object), "no permissions in /");
    assert_eq!(call(&base, Method::PUT, "/api/policies/%2F/guest-p", Some(policy)).await.0, 201);
    let (_, listed) = call_as(&base, as_user, Method::GET, "/api/policies", None).await;
    assert_eq!(listed.as_array().expect("list").iter().map(|p| p["vhost"].clone()).collect::<Vec<_>>(), [json!(vhost)]);
    assert_eq!(call(&base, Method::DELETE, "/api/policies/%2F/guest-p", None).await.0, 204);

    // Authentication failures.
    let (status, _) = call_as(&base, None, Method::GET, "/api/vhosts", None).await;
    assert_eq!(status, 401);
    let wrong = call_as(&base, Some(("guest", "wrong")), Method::GET, "/api/vhosts", None).await;
    assert_eq!(wrong, (401, json!({"error": "not_authorized", "reason": "Login failed"})));
    let plain = unique("acc-plain");
    let plain_path = format!("/api/users/{plain}");
    let tagless = call(&base, Method::PUT, &plain_path, Some(json!({"password": "pw", "tags": ""}))).await;
    assert_eq!(tagless.0, 201);
    let refused = call_as(&base, Some((&plain, "pw")), Method::GET, "/api/whoami", None).await;
    assert_eq!(refused, (401, json!({"error": "not_authorised", "reason": "Not management user"})));

    // Bulk delete stops at the first missing user.
    let bulk = call(&base, Method::POST, "/api/users/bulk-delete", Some(json!({"users": [plain, "nope"]}))).await;
    assert_eq!(bulk, (400, json!({"error": "bad_request", "reason": ["no_such_user", "nope"]})));
    assert_eq!(call(&base, Method::GET, &format!("/api/users/{plain}"), None).await.0, 404, "deleted before the error");

    // Deleting the vhost drops its permissions; a second delete is 404.
    assert_eq!(call(&base, Method::DELETE, &format!("/api/vhosts/{}", enc(&vhost)), None).await.0, 204);
    assert_eq!(call(&base, Method::GET, &perm_path, None).await.0, 404);
    assert_eq!(call(&base, Method::DELETE, &format!("/api/vhosts/{vhost}"), None).await, (404, not_found));
    assert_eq!(call(&base, Method::DELETE, &path, None).await.0, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_users_and_permissions_import_into_another_broker() {
    let source = Broker::start();
    let Some(from) = http_base(&source) else { return };
    let (vhost, user) = (unique("acc-vh"), unique("acc-user"));
    assert_eq!(call(&from, Method::PUT, &format!("/api/vhosts/{vhost}"), None).await.0, 201);
    let u = json!({"password": "pw", "tags": "management"});
    assert_eq!(call(&from, Method::PUT, &format!("/api/users/{user}"), Some(u)).await.0, 201);
    let p = json!({"configure": "^c", "write": "^w", "read": "^r"});
    assert_eq!(call(&from, Method::PUT, &format!("/api/permissions/{vhost}/{user}"), Some(p)).await.0, 201);
    let t = json!({"exchange": "amq.topic", "write": "^a", "read": ".*"});
    assert_eq!(call(&from, Method::PUT, &format!("/api/topic-permissions/{vhost}/{user}"), Some(t)).await.0, 201);

    let (status, defs) = call(&from, Method::GET, "/api/definitions", None).await;
    assert_eq!(status, 200);
    let exported = defs["users"].as_array().expect("users").iter().find(|x| x["name"] == user.as_str()).expect("user");
    assert_eq!(keys(exported), ["hashing_algorithm", "limits", "name", "password_hash", "tags"]);
    assert_eq!(exported["tags"], json!(["management"]));
    assert!(defs["vhosts"].as_array().expect("vhosts").contains(&json!({"name": vhost})));
    assert!(defs["permissions"]
        .as_array()
        .expect("permissions")
        .contains(&json!({"user": user, "vhost": vhost, "configure": "^c", "write": "^w", "read": "^r"})));
    assert!(defs["topic_permissions"]
        .as_array()
        .expect("topic permissions")
        .contains(&json!({"user": user, "vhost": vhost, "exchange": "amq.topic", "write": "^a", "read": ".*"})));

    let target = Broker::start();
    let to = http_base(&target).expect("spawned");
    assert_eq!(call(&to, Method::POST, "/api/definitions", Some(defs)).await.0, 204);
    // The password hash came along: the user logs in to the imported vhost with its password.
    let (_, me) = call_as(&to, Some((&user, "pw")), Method::GET, "/api/whoami", None).await;
    assert_eq!(me, json!({"name": user, "tags": ["management"]}));
    let conn = connect_url(&target.amqp_url_with(&user, "pw", &vhost)).await;
    let ch = channel(&conn).await;
    let options = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    try_declare_with(&ch, "c.q", options, FieldTable::default()).await.expect("configure ^c allows c.q");
    assert_code(try_declare_with(&ch, "x.q", options, FieldTable::default()).await, 403);
    close(&conn).await;
}
