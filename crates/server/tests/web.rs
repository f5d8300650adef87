//! The embedded pages: every route serves its page, pages are never cached,
//! hashed assets are cached for good, and each has its content type.

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
