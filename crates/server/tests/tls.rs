//! HTTPS: TLS with ALPN h2, many event streams over one connection.

mod support;

use std::sync::Arc;

use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use yrs::Doc;

#[tokio::test]
async fn twenty_five_streams_over_one_tls_http2_connection() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let weft = Weft::start(&[
        "--tls-cert",
        cert_path.to_str().expect("utf8"),
        "--tls-key",
        key_path.to_str().expect("utf8"),
        // One client creates 25 documents at once, past the default limit.
        "--max-new-docs-per-minute",
        "0",
    ]);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(&weft.addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN picked h2"
    );

    let mut h2 = http2_over(tls).await;
    let mut readers = Vec::new();
    for i in 0..25 {
        let resp = h2
            .request(
                "GET",
                &format!("https://localhost/sse/tls-{i}"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let mut r = SseReader::new(resp);
        r.next().await;
        r.next_change().await;
        readers.push(r);
    }
    for (i, r) in readers.iter_mut().enumerate() {
        let resp = h2
            .request(
                "POST",
                &format!("https://localhost/docs/tls-{i}/updates"),
                &[],
                insert(&Doc::new(), "x"),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            r.next_change().await.event.as_deref(),
            Some("update"),
            "stream {i}"
        );
    }
}
