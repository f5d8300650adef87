//! The embedded pages: every route serves its page, pages are never cached,
//! hashed assets are cached for good, and each has its content type; the
//! home page's list (`GET /docs`) gives sizes and last changes.

mod support;

use support::*;

#[tokio::test]
async fn pages_and_assets_are_served_with_the_right_headers() {
    let weft = Weft::start(&[]);
    let mut assets = Vec::new();
    for path in [
        "/",
        "/edit/some-doc",
        "/view/some-doc",
        "/history/some-doc",
        "/follow?docs=a,b",
    ] {
        let mut http = http1(&weft.addr).await;
        let resp = http.request("GET", path, &[], vec![]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(resp.headers()["cache-control"], "no-cache", "{path}");
        let html = String::from_utf8(body_bytes(resp).await).expect("utf8");
        assert!(html.contains("<!doctype html>"), "{path}");
        assets.extend(
            html.split('"')
                .filter(|s| s.starts_with("/assets/"))
                .map(str::to_owned),
        );
    }
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css"))
    );
    for asset in &assets {
        let mut http = http1(&weft.addr).await;
        let resp = http.request("GET", asset, &[], vec![]).await;
        assert_eq!(resp.status(), 200, "{asset}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let want = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert_eq!(resp.headers()["content-type"], want, "{asset}");
    }
    let (status, _) = request(&weft.addr, "GET", "/assets/missing.js", &[], vec![]).await;
    assert_eq!(status, 404);
    let (status, body) = request(&weft.addr, "GET", "/docs", &[], vec![]).await;
    assert_eq!((status, body), (200, b"[]".to_vec()));
}

/// The home page's list: each document's stored size and last change, as
/// the store knows them, beside its live connection counts.
#[tokio::test]
async fn the_home_list_gives_each_documents_size_and_last_change() {
    let weft = Weft::start(&[]);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis() as u64
    };
    let doc = yrs::Doc::new();
    let first = insert(&doc, "a first line of text");
    let before = now_ms();
    let (status, _) = request(
        &weft.addr,
        "POST",
        "/docs/listed/updates",
        &[],
        first.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let after = now_ms();

    let listed = || async {
        let (status, body) = request(&weft.addr, "GET", "/docs", &[], vec![]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let list: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let entry = list
            .as_array()
            .expect("a list")
            .iter()
            .find(|d| d["name"] == "listed")
            .cloned();
        entry.expect("the document is listed")
    };
    let entry = listed().await;
    let size = entry["size_bytes"].as_u64().expect("size_bytes");
    assert!(size >= first.len() as u64, "{entry}");
    let changed = entry["last_change_ms"].as_u64().expect("last_change_ms");
    assert!(
        (before..=after).contains(&changed),
        "{before} ≤ {changed} ≤ {after}"
    );
    assert_eq!(
        (entry["editors"].as_u64(), entry["viewers"].as_u64()),
        (Some(0), Some(0))
    );

    // A second change grows it and moves its last change on.
    let second = insert(&doc, ", and a second");
    let (status, _) = request(&weft.addr, "POST", "/docs/listed/updates", &[], second).await;
    assert_eq!(status, 200);
    let entry = listed().await;
    assert!(
        entry["size_bytes"].as_u64().expect("size_bytes") > size,
        "{entry}"
    );
    assert!(entry["last_change_ms"].as_u64().expect("last_change_ms") >= changed);
    assert_eq!(entry["last_seq"].as_u64(), Some(2), "{entry}");
}
