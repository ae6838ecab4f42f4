//! The local read-only API: what the agent holds, in the Kubernetes URL and JSON shape, served
//! from the store whether or not the hub is reachable (bound to 127.0.0.1 by default: it serves
//! Secrets).
//!
//! - `GET /api/v1/namespaces/{ns}/{pods|configmaps|secrets}[/{name}]`
//! - `GET /apis/devices.kubeedge.io/v1beta1/namespaces/{ns}/{devices|devicemodels}[/{name}]`
//! - `GET /healthz`, `GET /metrics`
//!
//! A missing object is a 404 `Status` as the API server writes it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edgefleet_channel::ResourceType;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::store::{Key, Store};

pub const DEVICES_GROUP: &str = "devices.kubeedge.io";
pub const DEVICES_VERSION: &str = "v1beta1";

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/namespaces/{ns}/{plural}", get(list_core))
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", get(get_core))
        .route(
            "/apis/devices.kubeedge.io/v1beta1/namespaces/{ns}/{plural}",
            get(list_devices),
        )
        .route(
            "/apis/devices.kubeedge.io/v1beta1/namespaces/{ns}/{plural}/{name}",
            get(get_devices),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
                None,
            )
        })
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

fn core_type(plural: &str) -> Option<ResourceType> {
    match plural {
        "pods" => Some(ResourceType::Pod),
        "configmaps" => Some(ResourceType::ConfigMap),
        "secrets" => Some(ResourceType::Secret),
        _ => None,
    }
}

fn device_type(plural: &str) -> Option<ResourceType> {
    match plural {
        "devices" => Some(ResourceType::Device),
        "devicemodels" => Some(ResourceType::DeviceModel),
        _ => None,
    }
}

async fn get_core(
    State(state): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    get_one(&state, core_type(&plural), "", &ns, &plural, &name)
}

async fn list_core(
    State(state): State<ApiState>,
    Path((ns, plural)): Path<(String, String)>,
) -> Response {
    list(&state, core_type(&plural), "v1", &ns, &plural)
}

async fn get_devices(
    State(state): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    get_one(
        &state,
        device_type(&plural),
        DEVICES_GROUP,
        &ns,
        &plural,
        &name,
    )
}

async fn list_devices(
    State(state): State<ApiState>,
    Path((ns, plural)): Path<(String, String)>,
) -> Response {
    list(
        &state,
        device_type(&plural),
        &format!("{DEVICES_GROUP}/{DEVICES_VERSION}"),
        &ns,
        &plural,
    )
}

fn get_one(
    state: &ApiState,
    type_: Option<ResourceType>,
    group: &str,
    ns: &str,
    plural: &str,
    name: &str,
) -> Response {
    let Some(type_) = type_ else {
        return unknown_resource(plural);
    };
    match state.store.get(&Key::new(type_, ns, name)) {
        Ok(Some(object)) => json_body(StatusCode::OK, object.body),
        Ok(None) => {
            let details = json!({"name": name, "group": group, "kind": plural});
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", qualified(plural, group)),
                Some(details),
            )
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
            None,
        ),
    }
}

fn list(
    state: &ApiState,
    type_: Option<ResourceType>,
    api_version: &str,
    ns: &str,
    plural: &str,
) -> Response {
    let Some(type_) = type_ else {
        return unknown_resource(plural);
    };
    match state.store.list(type_, ns) {
        Ok(objects) => {
            // Items are stored JSON texts: splice them in instead of parsing each one.
            let mut body = String::with_capacity(
                128 + objects.iter().map(|(_, o)| o.body.len() + 1).sum::<usize>(),
            );
            body.push_str(&format!(
                r#"{{"kind":"{}List","apiVersion":"{api_version}","metadata":{{"resourceVersion":""}},"items":["#,
                type_.kind().unwrap_or_default()
            ));
            for (i, (_, object)) in objects.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&object.body);
            }
            body.push_str("]}");
            json_body(StatusCode::OK, body)
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
            None,
        ),
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn unknown_resource(plural: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "the server could not find the requested resource ({plural} is not served locally)"
        ),
        None,
    )
}

fn json_body(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A `metav1.Status` failure, as the API server answers.
pub fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    json_body(code, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Object};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> ApiState {
        let store = MemoryStore::new();
        let cm = |name: &str, rv: &str| Object {
            uid: format!("uid-{name}"),
            resource_version: rv.into(),
            body: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "toll", "resourceVersion": rv},
                "data": {"rate": "5"}})
            .to_string(),
        };
        store
            .put(
                &Key::new(ResourceType::ConfigMap, "toll", "b"),
                cm("b", "2"),
            )
            .unwrap();
        store
            .put(
                &Key::new(ResourceType::ConfigMap, "toll", "a"),
                cm("a", "1"),
            )
            .unwrap();
        store
            .put(
                &Key::new(ResourceType::Device, "toll", "gate-1"),
                Object {
                    uid: "d1".into(),
                    resource_version: "4".into(),
                    body: json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device", "metadata": {"name": "gate-1", "namespace": "toll"}}).to_string(),
                },
            )
            .unwrap();
        ApiState {
            store: Arc::new(store),
            metrics: Arc::new(Metrics::default()),
        }
    }

    async fn get(path: &str) -> (StatusCode, Value) {
        let response = router(state())
            .oneshot(
                http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let code = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn serves_objects_in_the_kubernetes_shape() {
        let (code, body) = get("/api/v1/namespaces/toll/configmaps/a").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["kind"], "ConfigMap");
        assert_eq!(body["data"]["rate"], "5");
        let (code, body) =
            get("/apis/devices.kubeedge.io/v1beta1/namespaces/toll/devices/gate-1").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["kind"], "Device");
    }

    #[tokio::test]
    async fn lists_are_kubernetes_lists() {
        let (code, body) = get("/api/v1/namespaces/toll/configmaps").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["kind"], "ConfigMapList");
        assert_eq!(body["apiVersion"], "v1");
        let names: Vec<_> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("a"), json!("b")]);
        let (_, body) = get("/api/v1/namespaces/other/configmaps").await;
        assert_eq!(body["items"], json!([]));
        let (_, body) = get("/apis/devices.kubeedge.io/v1beta1/namespaces/toll/devices").await;
        assert_eq!(body["kind"], "DeviceList");
        assert_eq!(body["apiVersion"], "devices.kubeedge.io/v1beta1");
    }

    #[tokio::test]
    async fn missing_is_a_404_status() {
        let (code, body) = get("/api/v1/namespaces/toll/secrets/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "secrets \"nope\" not found", "reason": "NotFound",
                   "details": {"name": "nope", "group": "", "kind": "secrets"}, "code": 404})
        );
        let (code, body) =
            get("/apis/devices.kubeedge.io/v1beta1/namespaces/toll/devicemodels/m").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(
            body["message"],
            "devicemodels.devices.kubeedge.io \"m\" not found"
        );
        let (code, body) = get("/api/v1/namespaces/toll/deployments/x").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body["kind"], "Status");
        let (code, body) = get("/nothing/here").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body["reason"], "NotFound");
    }

    #[tokio::test]
    async fn health_and_metrics() {
        let response = router(state())
            .oneshot(
                http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("edgefleet_agent_sessions_up"));
        let (code, _) = get("/healthz").await;
        assert_eq!(code, StatusCode::OK);
    }
}
