//! The listener: plain TCP or TLS (rustls), HTTP/1.1 with upgrades for the event sockets,
//! header size bounded, and a graceful stop (no new connections, in-flight requests finish
//! within the drain time).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ari;
use crate::ari::errors::http_not_found;
use crate::config::Tls;
use crate::events;
use crate::health;
use crate::routing;
use crate::state::Gateway;

/// Every route the gateway answers. Nothing outside `/ari/`, `/healthz` and `/metrics`.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics))
        .route("/ari/events", get(events::events))
        .route("/ari/api-docs/{*file}", any(ari::docs::api_docs))
        .route("/ari", any(routing::ari))
        .route("/ari/", any(routing::ari))
        .route("/ari/{*path}", any(routing::ari))
        .fallback(outside)
        .with_state(gw)
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let (legs, members) = gw.bridging.counts();
    gw.metrics.bridging_legs.set(legs as i64);
    gw.metrics.bridging_members.set(members as i64);
    let text = gw.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn outside() -> Response {
    http_not_found()
}

pub fn tls_acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert_file).and_then(|i| i.collect::<Result<Vec<_>, _>>()).map_err(|e| format!("[tls] cert_file {}: {e}", tls.cert_file))?;
    if certs.is_empty() {
        return Err(format!("[tls] cert_file {}: no certificate in it", tls.cert_file));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| format!("[tls] key_file {}: {e}", tls.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("[tls]: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until shutdown, then lets open requests finish for up to `drain`.
/// Upgraded event sockets are not connections any more: they close themselves on shutdown.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, tls: Option<TlsAcceptor>, drain: Duration) {
    let app = router(gw.clone());
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(gw.config.limits.max_header_bytes.max(8192)).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder.http1_only());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (app, builder, tls, stop) = (app.clone(), builder.clone(), tls.clone(), gw.shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => connection(TokioIo::new(tcp), app, &builder, stop).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => connection(TokioIo::new(stream), app, &builder, stop).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        tracing::warn!(?drain, "requests still open after the drain time; closing them");
    }
}

async fn connection<I>(io: TokioIo<I>, app: Router, builder: &auto::Builder<TokioExecutor>, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            // Finish the request in flight, then close (keep-alive connections end here).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
