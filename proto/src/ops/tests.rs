#![allow(clippy::unwrap_used)]

use super::*;

fn endpoint(ready: Readiness) -> Endpoint {
    Endpoint {
        metrics: Box::new(|| "up 1\n".into()),
        ready: Box::new(move || ready.clone()),
    }
}

fn answer(head: &str, ready: Readiness) -> String {
    let response = respond(head.as_bytes(), &endpoint(ready));
    String::from_utf8(response.encode()).unwrap()
}

#[test]
fn each_path_answers_with_its_status() {
    let cases = [
        (
            "GET /metrics HTTP/1.1\r\n\r\n",
            Ok(()),
            "HTTP/1.1 200",
            "up 1\n",
        ),
        (
            "GET /live HTTP/1.0\r\n\r\n",
            Err("x".into()),
            "HTTP/1.1 200",
            "live\n",
        ),
        (
            "GET /ready HTTP/1.1\r\n\r\n",
            Ok(()),
            "HTTP/1.1 200",
            "ready\n",
        ),
        (
            "GET /ready?verbose HTTP/1.1\r\n\r\n",
            Err("draining".into()),
            "HTTP/1.1 503",
            "not ready: draining\n",
        ),
        (
            "GET /nope HTTP/1.1\r\n\r\n",
            Ok(()),
            "HTTP/1.1 404",
            "not found",
        ),
        (
            "POST /ready HTTP/1.1\r\n\r\n",
            Ok(()),
            "HTTP/1.1 405",
            "only GET",
        ),
    ];
    for (head, ready, status, body) in cases {
        let text = answer(head, ready);
        assert!(text.starts_with(status), "{head:?}: {text}");
        assert!(
            text.split("\r\n\r\n").nth(1).unwrap().starts_with(body),
            "{head:?}: {text}"
        );
    }
}

#[test]
fn head_gets_the_length_of_get_without_the_body() {
    let text = answer("HEAD /live HTTP/1.1\r\n\r\n", Ok(()));
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[test]
fn garbage_is_a_bad_request_never_a_panic() {
    for head in [
        "",
        "\r\n\r\n",
        "GET\r\n\r\n",
        "GET /live\r\n\r\n",
        "GET /live SPDY/3\r\n\r\n",
        "\u{0}\u{ff}",
    ] {
        let text = answer(head, Ok(()));
        assert!(text.starts_with("HTTP/1.1 400"), "{head:?}: {text}");
    }
}
