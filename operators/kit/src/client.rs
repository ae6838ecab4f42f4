//! A `kube::Client` that counts the operator's own API requests.
//!
//! `<prefix>_api_requests_total{verb}` is what an operator costs the API server, the figure the
//! scale targets bound ("API calls per target"). `verb` is the API server's own vocabulary
//! (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), read from
//! the HTTP method and the path; a non-resource request (discovery, `/version`) counts as `get`.
//!
//! Counted once per request the operator's code sends, when it is sent: a request that fails,
//! or that the client retries internally, counts once; a watch counts once however long it
//! streams.
//!
//! Every request but a watch is bounded by [`API_CALL_TIMEOUT`] (until the response headers
//! arrive; the body then runs under kube's read timeout): one hung connection can hold an
//! operator's slot for a while, never for ever. A watch streams for as long as the API server
//! keeps it open (it ends it by itself after its `timeoutSeconds`).
//!
//! ```ignore
//! let registry = prometheus::Registry::new();
//! let client = kit::client_with_metrics(&registry, "edgefleet_rollout").await?;
//! ```

use http::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt};
use prometheus::{IntCounterVec, Opts, Registry};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::{Error, Result};

/// Every `verb` label value, pre-registered at 0 so rates and deltas work from the start.
pub const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "other",
];

/// A client from the inferred configuration (`KUBECONFIG`, `~/.kube/config`, or in-cluster:
/// what `kube::Client::try_default` uses) that counts its requests in
/// `<prefix>_api_requests_total{verb}`, registered in `registry`.
///
/// # Errors
/// [`Error::KubeConfig`] without a configuration, [`Error::Client`] when no client can be built
/// from it, [`Error::Metrics`] when the counter cannot be registered (invalid prefix, or already
/// registered under that prefix).
pub async fn client_with_metrics(registry: &Registry, prefix: &str) -> Result<kube::Client> {
    let layer = CountRequestsLayer::register(registry, prefix)?;
    let config = kube::Config::infer().await?;
    client_with_layer(config, &layer).map_err(Error::Client)
}

/// How long any request but a watch may wait for its response before it fails.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A client from `config` with `layer` outside the default stack (so it sees each request once,
/// as the operator's code sends it), every non-watch request bounded by [`API_CALL_TIMEOUT`].
///
/// # Errors
/// When `kube` cannot build a client from `config`.
pub fn client_with_layer(
    config: kube::Config,
    layer: &CountRequestsLayer,
) -> kube::Result<kube::Client> {
    client_with_timeout(config, layer, API_CALL_TIMEOUT)
}

/// [`client_with_layer`] with another bound than [`API_CALL_TIMEOUT`].
///
/// The client speaks HTTP/2 to the API server when it offers it (kube-apiserver does), as
/// client-go does: every request and watch of the process shares one TLS connection, at most
/// the server's stream limit at once (kube-apiserver `--http2-max-streams-per-connection`, Go's
/// 250 by default; a request beyond it waits for a stream). kube's own builder speaks HTTP/1.1,
/// one connection per request in flight: a hub holding 2,000 sessions held 1,845 TLS
/// connections to the API server (each a handshake on both sides and tens of KiB of buffers in
/// the hub), idle in its pool. A configuration with a proxy keeps kube's builder.
///
/// # Errors
/// When `kube` cannot build a client from `config`.
pub fn client_with_timeout(
    config: kube::Config,
    layer: &CountRequestsLayer,
    timeout: Duration,
) -> kube::Result<kube::Client> {
    if config.proxy_url.is_some() {
        return Ok(ClientBuilder::try_from(config)?
            .with_layer(&BoundRequestsLayer { timeout })
            .with_layer(layer)
            .build());
    }
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(BoundRequestsLayer { timeout })
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http2_client(&config)?);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A pinged HTTP/2 connection that dies unnoticed fails its streams within this (a watch on it
/// would otherwise wait for its read timeout, minutes).
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The hyper client under [`client_with_timeout`]: kube's TLS configuration and timeouts,
/// HTTP/2 offered by ALPN (HTTP/1.1 when the server declines).
fn http2_client(
    config: &kube::Config,
) -> kube::Result<
    hyper_util::client::legacy::Client<
        hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>,
        kube::client::Body,
    >,
> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(PING_EVERY)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            // A request given up (its timeout) while its answer is on the way makes h2 reset the
            // stream when the answer's frames arrive, and h2 closes the connection after 1,024
            // such resets over its life (a defence of servers against hostile peers), taking
            // every watch on it along: a hub ramping 10,000 sessions on a saturated API server
            // lost all its watches that way. The peer here is the API server.
            .http2_max_local_error_reset_streams(None::<usize>)
            .build(connector),
    )
}

/// The tower layer that bounds every request but a watch: see [`BoundRequests`].
#[derive(Clone, Copy, Debug)]
pub struct BoundRequestsLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for BoundRequestsLayer {
    type Service = BoundRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundRequests {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Fails a request that is not a watch when its response has not come within `timeout`.
#[derive(Clone, Debug)]
pub struct BoundRequests<S> {
    inner: S,
    timeout: Duration,
}

/// The error of a request that outlived its bound.
#[derive(Debug, thiserror::Error)]
#[error("no response from the API server within {0:?}")]
pub struct TimedOut(pub Duration);

impl<S, B> Service<Request<B>> for BoundRequests<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let bound = (!is_watch(request.uri())).then_some(self.timeout);
        let response = self.inner.call(request);
        Box::pin(async move {
            match bound {
                None => response.await.map_err(Into::into),
                Some(t) => match tokio::time::timeout(t, response).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(Box::new(TimedOut(t)) as BoxError),
                },
            }
        })
    }
}

/// The tower layer behind [`client_with_metrics`]: wraps a service in [`CountRequests`].
#[derive(Clone, Debug)]
pub struct CountRequestsLayer {
    requests: IntCounterVec,
}

impl CountRequestsLayer {
    /// Creates `<prefix>_api_requests_total{verb}` (a trailing `_` on `prefix` is accepted) and
    /// registers it in `registry`.
    ///
    /// # Errors
    /// An invalid metric name, or the counter already registered in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let prefix = prefix.trim_end_matches('_');
        let requests = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_api_requests_total"),
                "Requests this process sent to the Kubernetes API server, by verb.",
            ),
            &["verb"],
        )?;
        for verb in VERBS {
            requests.with_label_values(&[verb]);
        }
        registry.register(Box::new(requests.clone()))?;
        Ok(Self { requests })
    }

    /// The counter, e.g. to read it in a test.
    pub fn counter(&self) -> &IntCounterVec {
        &self.requests
    }
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            requests: self.requests.clone(),
        }
    }
}

/// Counts each request by verb, then hands it on unchanged.
#[derive(Clone, Debug)]
pub struct CountRequests<S> {
    inner: S,
    requests: IntCounterVec,
}

impl<S, B> Service<Request<B>> for CountRequests<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.requests
            .with_label_values(&[verb(request.method(), request.uri())])
            .inc();
        self.inner.call(request)
    }
}

/// The API server's verb for a request.
pub fn verb(method: &Method, uri: &Uri) -> &'static str {
    let collection = is_collection(uri.path());
    match *method {
        Method::GET if is_watch(uri) => "watch",
        Method::GET if collection == Some(true) => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection == Some(true) => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// `watch=true` (or `1`) in the query, or the old `/watch/` path form.
fn is_watch(uri: &Uri) -> bool {
    let query_says = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    query_says || resource_segments(uri.path()).is_some_and(|r| r.first() == Some(&"watch"))
}

/// `Some(true)` for a collection (`.../pods`), `Some(false)` for an object or its subresource
/// (`.../pods/x`, `.../pods/x/status`), `None` for a non-resource path (`/version`, `/apis`).
fn is_collection(path: &str) -> Option<bool> {
    let segments = resource_segments(path)?;
    let mut rest = segments.as_slice();
    if rest.first() == Some(&"watch") {
        rest = &rest[1..];
    }
    // `namespaces/<ns>/<resource>...` is a namespaced resource; `namespaces[/<ns>]` itself is a
    // cluster-scoped one.
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        rest = &rest[2..];
    }
    match rest.len() {
        0 => None,
        1 => Some(true),
        _ => Some(false),
    }
}

/// The path segments after `/api/<version>` or `/apis/<group>/<version>`; `None` for a
/// non-resource path.
fn resource_segments(path: &str) -> Option<Vec<&str>> {
    let mut segments = path.trim_matches('/').split('/');
    let skip = match segments.next() {
        Some("api") => 1,
        Some("apis") => 2,
        _ => return None,
    };
    for _ in 0..skip {
        segments.next()?;
    }
    Some(segments.filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_the_api_servers() {
        let cases = [
            ("GET", "/api/v1/pods?watch=true&resourceVersion=1", "watch"),
            (
                "GET",
                "/api/v1/namespaces/a/pods?labelSelector=x%3Dy&watch=true",
                "watch",
            ),
            ("GET", "/api/v1/watch/namespaces/a/pods", "watch"),
            ("GET", "/api/v1/pods", "list"),
            ("GET", "/api/v1/namespaces/a/pods?limit=500", "list"),
            ("GET", "/api/v1/namespaces/a/pods/p", "get"),
            ("GET", "/api/v1/namespaces/a/pods/p/log", "get"),
            ("GET", "/api/v1/namespaces", "list"),
            ("GET", "/api/v1/namespaces/a", "get"),
            ("GET", "/api/v1/nodes/edge-0001", "get"),
            (
                "GET",
                "/apis/edgefleet.io/v1alpha1/namespaces/a/rolloutjobs",
                "list",
            ),
            ("GET", "/apis/edgefleet.io/v1alpha1/rolloutjobs", "list"),
            ("GET", "/apis", "get"),
            ("GET", "/api/v1", "get"),
            ("GET", "/version", "get"),
            ("POST", "/api/v1/namespaces/a/pods", "create"),
            ("PUT", "/apis/apps/v1/namespaces/a/daemonsets/d", "update"),
            ("PATCH", "/api/v1/namespaces/a/pods/p", "patch"),
            (
                "PATCH",
                "/apis/edgefleet.io/v1alpha1/namespaces/a/rolloutjobs/j/status?fieldManager=x",
                "patch",
            ),
            ("DELETE", "/api/v1/namespaces/a/pods/p", "delete"),
            (
                "DELETE",
                "/api/v1/namespaces/a/pods?labelSelector=edgefleet.io%2Fjob-uid%3Du",
                "deletecollection",
            ),
            ("OPTIONS", "/api/v1/pods", "other"),
        ];
        for (method, uri, want) in cases {
            let method: Method = method.parse().unwrap();
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(verb(&method, &uri), want, "{method} {uri}");
            assert!(VERBS.contains(&want));
        }
    }

    /// A service that answers every request at once.
    struct Answer;

    impl Service<Request<()>> for Answer {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    /// A service that never answers.
    struct Never;

    impl Service<Request<()>> for Never {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<(), Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn every_request_but_a_watch_is_bounded() {
        let timeout = Duration::from_millis(100);
        let mut service = BoundRequestsLayer { timeout }.layer(Never);
        let request = |uri: &str| Request::builder().uri(uri).body(()).unwrap();
        for uri in [
            "/api/v1/namespaces/a/pods/p",
            "/api/v1/pods?limit=500",
            "/version",
        ] {
            let err = service.call(request(uri)).await.unwrap_err();
            assert!(err.is::<TimedOut>(), "{uri}: {err}");
        }
        let watch = service.call(request("/api/v1/pods?watch=true"));
        assert!(
            tokio::time::timeout(timeout * 5, watch).await.is_err(),
            "a watch streams for as long as the server keeps it"
        );
    }

    #[tokio::test]
    async fn a_client_fails_against_a_server_that_never_answers() {
        // Accepts the connection and never says a word.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = std::thread::spawn(move || listener.accept());
        let registry = Registry::new();
        let layer = CountRequestsLayer::register(&registry, "edgefleet_test").unwrap();
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = client_with_timeout(config, &layer, Duration::from_millis(300)).unwrap();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "default");
        let started = std::time::Instant::now();
        assert!(pods.get("p").await.is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    fn count(layer: &CountRequestsLayer, verb: &str) -> u64 {
        layer.counter().with_label_values(&[verb]).get()
    }

    #[test]
    fn the_layer_counts_each_request_by_verb_and_registers_once() {
        let registry = Registry::new();
        let layer = CountRequestsLayer::register(&registry, "edgefleet_test_").unwrap();
        let mut service = layer.layer(Answer);
        let request =
            |method: &str, uri: &str| Request::builder().method(method).uri(uri).body(()).unwrap();
        service
            .call(request("GET", "/api/v1/pods?watch=true"))
            .into_inner()
            .unwrap();
        service
            .call(request("GET", "/api/v1/namespaces/a/pods/p"))
            .into_inner()
            .unwrap();
        service
            .call(request("GET", "/api/v1/namespaces/a/pods/q"))
            .into_inner()
            .unwrap();
        service
            .call(request("DELETE", "/api/v1/namespaces/a/pods/q"))
            .into_inner()
            .unwrap();
        assert_eq!(
            (
                count(&layer, "watch"),
                count(&layer, "get"),
                count(&layer, "delete")
            ),
            (1, 2, 1)
        );

        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "edgefleet_test_api_requests_total")
            .expect("registered under the prefix");
        assert_eq!(family.get_metric().len(), VERBS.len(), "every verb from 0");
        assert!(
            CountRequestsLayer::register(&registry, "edgefleet_test").is_err(),
            "a second registration is refused"
        );
    }

    #[tokio::test]
    async fn a_client_built_with_the_layer_counts_what_it_sends() {
        let registry = Registry::new();
        let layer = CountRequestsLayer::register(&registry, "edgefleet_test").unwrap();
        // Nothing listens on port 1: the request fails, and was still sent once.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = client_with_layer(config, &layer).unwrap();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "default");
        assert!(pods.list(&kube::api::ListParams::default()).await.is_err());
        assert!(pods.get("p").await.is_err());
        assert_eq!((count(&layer, "list"), count(&layer, "get")), (1, 1));
    }
}
