//! Backups in an S3-compatible object store, through the `object_store`
//! crate (AWS Signature Version 4, path-style requests to a custom endpoint).

use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ClientOptions, ObjectStore as _, PutOptions, PutPayload, RetryConfig};

use crate::api::ObjectStore;

/// What the store needs from Secrets.
pub struct Access {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The CA that signed the store's certificate (PEM), if private.
    pub ca: Option<Vec<u8>>,
}

/// A store, ready for requests. Building it makes no request.
pub struct Store {
    inner: AmazonS3,
}

/// A few quick retries: a failed backup is tried again after a backoff,
/// and a reconcile must not wait minutes on an unreachable store.
fn retry() -> RetryConfig {
    RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(30), ..Default::default() }
}

impl Store {
    pub fn connect(spec: &ObjectStore, access: &Access) -> Result<Self, String> {
        let mut options =
            ClientOptions::new().with_timeout(Duration::from_secs(30)).with_connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &access.ca {
            let ca = object_store::Certificate::from_pem(pem).map_err(|e| format!("the store's CA: {e}"))?;
            options = options.with_root_certificate(ca);
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.region)
            .with_access_key_id(&access.access_key_id)
            .with_secret_access_key(&access.secret_access_key)
            .with_retry(retry());
        if let Some(endpoint) = &spec.endpoint {
            // A plain-HTTP endpoint is the spec's explicit choice; the data is
            // encrypted with the backup password either way.
            options = options.with_allow_http(endpoint.starts_with("http://"));
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let inner = builder.with_client_options(options).build().map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }

    /// Writes one object with user metadata (`x-amz-meta-*`).
    pub async fn put(&self, key: &str, data: Vec<u8>, metadata: &[(&'static str, String)]) -> Result<(), String> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        for (name, value) in metadata {
            attributes.insert(Attribute::Metadata((*name).into()), value.clone().into());
        }
        let options = PutOptions { attributes, ..Default::default() };
        self.inner.put_opts(&Path::from(key), PutPayload::from(data), options).await.map(|_| ()).map_err(describe)
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        // `Path` drops a trailing `/`; listing under it lists the same keys.
        let prefix = Path::from(prefix);
        let listed: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await.map_err(describe)?;
        Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    pub async fn delete(&self, key: &str) -> Result<(), String> {
        self.inner.delete(&Path::from(key)).await.map_err(describe)
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let object = self.inner.get(&Path::from(key)).await.map_err(describe)?;
        object.bytes().await.map(|b| b.to_vec()).map_err(describe)
    }

    /// One object and the user metadata `name` it carries (`x-amz-meta-NAME`).
    pub async fn get_with_metadata(&self, key: &str, name: &str) -> Result<(Vec<u8>, Option<String>), String> {
        let object = self.inner.get(&Path::from(key)).await.map_err(describe)?;
        let value = object.attributes.get(&Attribute::Metadata(name.to_string().into())).map(|v| v.to_string());
        let data = object.bytes().await.map(|b| b.to_vec()).map_err(describe)?;
        Ok((data, value))
    }
}

/// The error with its causes (the store's own code and message among them).
fn describe(e: object_store::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
