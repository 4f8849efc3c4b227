//! HTTPS for the webapp. Like the client, it serves the certificate uploaded
//! with `POST /v1/certificates/external` (read at start, so webapps need a
//! restart after an upload), and until then a certificate issued by a CA of
//! the deployment, both kept in the database.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::config::Config;
use crate::db::{Arg, Db};

/// Names of the blobs in `wa_blobs`.
pub const UPLOADED: &str = "external_certificate";
const CA_CERT: &str = "external_ca_cert";
const CA_KEY: &str = "external_ca_key";

/// One PEM section of an upload.
#[derive(Debug, PartialEq, Eq)]
enum Section {
    Key,
    Cert,
}

/// Any PEM section, by kind: the client reads every section of an upload.
struct AnySection(SectionKind);

impl PemObject for AnySection {
    fn from_pem(kind: SectionKind, _der: Vec<u8>) -> Option<Self> {
        Some(Self(kind))
    }
}

fn sections(pem: &str) -> Result<Vec<Section>, String> {
    let mut out = vec![];
    for item in AnySection::pem_slice_iter(pem.as_bytes()) {
        match item.map_err(|e| format!("unreadable PEM: {e}"))?.0 {
            SectionKind::Certificate => out.push(Section::Cert),
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => out.push(Section::Key),
            _ => return Err("unexpected PEM section".into()),
        }
    }
    Ok(out)
}

/// The client's rule for an upload: one file with the private key, the
/// certificate and at least one intermediate CA certificate, in that order.
pub fn check_upload(pem: &str) -> Result<(), String> {
    let s = sections(pem)?;
    match s.as_slice() {
        [Section::Key, Section::Cert, Section::Cert, rest @ ..] if rest.iter().all(|x| *x == Section::Cert) => {
            parse(pem).map(|_| ()).map_err(|e| e.to_string())
        }
        [Section::Key, Section::Cert] => {
            Err("at least one intermediate CA certificate must follow the certificate".into())
        }
        _ => Err("expected the private key, the certificate, then one or more intermediate CA certificates".into()),
    }
}

/// A CA bundle (the webhook CA): one or more certificates and nothing else.
pub fn check_ca_bundle(pem: &str) -> Result<(), String> {
    let s = sections(pem)?;
    if s.is_empty() {
        return Err("no PEM certificate found".into());
    }
    if s.contains(&Section::Key) {
        return Err("a CA bundle must not contain a private key".into());
    }
    Ok(())
}

/// The certificates after the server's own: what `GET /v1/certificates/external/ca`
/// answers once a certificate has been uploaded.
pub fn uploaded_chain(pem: &str) -> String {
    let mut out = String::new();
    let mut seen = 0;
    for item in pem.split("-----BEGIN ").skip(1) {
        if item.starts_with("CERTIFICATE-----") {
            seen += 1;
            if seen > 1 {
                let end = item.find("-----END CERTIFICATE-----").map(|i| i + "-----END CERTIFICATE-----".len());
                out.push_str("-----BEGIN ");
                out.push_str(&item[..end.unwrap_or(item.len())]);
                out.push('\n');
            }
        }
    }
    out
}

fn parse(pem: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let certs = certificates(pem)?;
    let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(Error::Fatal("the certificate file has no private key".into()));
        }
        Err(e) => return Err(Error::Fatal(format!("unreadable PEM: {e}"))),
    };
    if certs.is_empty() {
        return Err(Error::Fatal("the certificate file has no certificate".into()));
    }
    Ok((certs, key))
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Fatal(format!("unreadable PEM: {e}")))
}

async fn blob(db: &Db, name: &str) -> Result<Option<String>, Error> {
    let rows = db.rows("SELECT value FROM wa_blobs WHERE name = ?", &[Arg::S(name)]).await?;
    rows.first().map(|r| sqlx::Row::try_get::<String, _>(r, 0).map_err(Error::db("read blob"))).transpose()
}

pub async fn uploaded(db: &Db) -> Result<Option<String>, Error> {
    blob(db, UPLOADED).await
}

/// Stores (or replaces) the uploaded certificate file.
pub async fn store_upload(db: &Db, pem: &str) -> Result<(), Error> {
    db.exec("DELETE FROM wa_blobs WHERE name = ?", &[Arg::S(UPLOADED)]).await?;
    db.exec("INSERT INTO wa_blobs (name, value) VALUES (?, ?)", &[Arg::S(UPLOADED), Arg::S(pem)]).await?;
    Ok(())
}

fn ca_params(deployment: &str) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Fatal(format!("CA: {e}")))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::OrganizationName, "WhatsApp Business API client (emulated)");
    p.distinguished_name.push(DnType::CommonName, format!("Client CA {deployment}"));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 12, 31);
    Ok(p)
}

/// The deployment's CA (PEM certificate and key), created by the first
/// webapp that needs it.
pub async fn ca(db: &Db) -> Result<(String, String), Error> {
    if let (Some(c), Some(k)) = (blob(db, CA_CERT).await?, blob(db, CA_KEY).await?) {
        return Ok((c, k));
    }
    let deployment = db.settings().await?.deployment_id;
    let key = KeyPair::generate().map_err(|e| Error::Fatal(format!("CA key: {e}")))?;
    let cert = ca_params(&deployment)?.self_signed(&key).map_err(|e| Error::Fatal(format!("CA: {e}")))?;
    // Another webapp may win the insert; the rows it wrote are then used.
    if db
        .exec("INSERT INTO wa_blobs (name, value) VALUES (?, ?)", &[Arg::S(CA_KEY), Arg::S(&key.serialize_pem())])
        .await
        .is_ok()
    {
        db.exec("INSERT INTO wa_blobs (name, value) VALUES (?, ?)", &[Arg::S(CA_CERT), Arg::S(&cert.pem())]).await?;
    }
    for _ in 0..50 {
        if let (Some(c), Some(k)) = (blob(db, CA_CERT).await?, blob(db, CA_KEY).await?) {
            return Ok((c, k));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(Error::Fatal("the deployment's CA is incomplete in the database".into()))
}

/// A server certificate for `localhost`, the hostname, 127.0.0.1 and
/// `WA_WEB_SERVERNAME`, issued by the deployment's CA.
async fn self_signed(db: &Db, cfg: &Config) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let (ca_pem, ca_key_pem) = ca(db).await?;
    let deployment = db.settings().await?.deployment_id;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| Error::Fatal(format!("CA key: {e}")))?;
    // rcgen signs with the issuer's name and key; rebuilding the CA from the
    // same parameters and key gives exactly those.
    let issuer = ca_params(&deployment)?.self_signed(&ca_key).map_err(|e| Error::Fatal(format!("CA: {e}")))?;
    let mut names = vec![];
    if let Some(n) = &cfg.web_servername {
        names.push(n.clone());
    }
    names.extend(["localhost".to_string(), cfg.hostname.clone(), "127.0.0.1".to_string()]);
    names.dedup();
    let mut params = CertificateParams::new(names).map_err(|e| Error::Fatal(format!("certificate: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, cfg.web_servername.clone().unwrap_or_else(|| "localhost".into()));
    let key = KeyPair::generate().map_err(|e| Error::Fatal(format!("key: {e}")))?;
    let cert = params.signed_by(&key, &issuer, &ca_key).map_err(|e| Error::Fatal(format!("certificate: {e}")))?;
    let ca_der = certificates(&ca_pem)?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(ca_der);
    Ok((chain, PrivateKeyDer::Pkcs8(key.serialize_der().into())))
}

/// The acceptor a webapp starts with: the uploaded certificate if any (a
/// broken upload keeps the webapp from starting, as with the client), else
/// one from the deployment's CA.
pub async fn acceptor(db: &Db, cfg: &Config) -> Result<TlsAcceptor, Error> {
    let (certs, key) = match uploaded(db).await? {
        Some(pem) => {
            tracing::info!("serving the uploaded certificate");
            parse(&pem).map_err(|e| Error::Fatal(format!("the uploaded certificate cannot be used: {e}")))?
        }
        None => {
            tracing::info!("no certificate uploaded: serving one from the deployment's CA");
            self_signed(db, cfg).await?
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Fatal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Fatal(format!("the uploaded certificate cannot be used: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> (String, String, String) {
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params("root").unwrap().self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &root, &root_key)
            .unwrap();
        (leaf_key.serialize_pem(), leaf.pem(), root.pem())
    }

    #[test]
    fn uploads_need_key_certificate_and_chain_in_order() {
        let (key, cert, ca) = chain();
        assert!(check_upload(&format!("{key}{cert}{ca}")).is_ok());
        assert!(check_upload(&format!("{key}{cert}")).is_err());
        assert!(check_upload(&format!("{cert}{key}{ca}")).is_err());
        assert!(check_upload("garbage").is_err());
        assert_eq!(uploaded_chain(&format!("{key}{cert}{ca}")).trim(), ca.trim());
    }
}
