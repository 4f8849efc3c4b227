//! HTTPS for the webapp: a given PEM certificate or a self-signed one.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::config::Config;

fn load(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or_else(|| Error::Config(format!("{}: no private key", key.display())))?;
    Ok((certs, key))
}

fn self_signed(cfg: &Config) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let mut names = vec!["localhost".to_string(), cfg.hostname.clone()];
    if let Some(n) = &cfg.web_servername {
        names.insert(0, n.clone());
    }
    names.dedup();
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| Error::Fatal(format!("self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key))
}

pub fn acceptor(cfg: &Config) -> Result<TlsAcceptor, Error> {
    let (certs, key) = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => load(c, k)?,
        (None, None) => {
            tracing::info!("no certificate given: using a self-signed one");
            self_signed(cfg)?
        }
        _ => {
            return Err(Error::Config(
                "set both WA_EMULATOR_TLS_CERT_FILE and WA_EMULATOR_TLS_KEY_FILE, or neither".into(),
            ));
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Fatal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Fatal(format!("TLS certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over HTTPS until the process is asked to stop.
pub async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, app: Router) -> Result<(), Error> {
    let accept = async {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // Handshakes run in their own task so a slow client blocks no one.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    };
    tokio::select! {
        _ = accept => Ok(()),
        _ = crate::shutdown_signal() => Ok(()),
    }
}
