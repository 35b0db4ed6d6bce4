//! URLs and HTTP errors as cdc shows them: without the credentials a sink's `url` may carry.
//!
//! A search node's `url` may be written `https://user:pass@host:9200`, a webhook's may carry a
//! token as user name or in its query string (`?token=…`). Every message, log line, `/ready`
//! entry, dead letter's `target` and `cdc check` finding names such a server by [`url`], never
//! by the configured text. HTTP client errors go through [`http_error`]: reqwest writes the
//! request URL into its message (` for url (…)`), query string included.

/// `raw` with its user information replaced by `***` and each query parameter's value by `***`
/// (names kept: they help to see which URL it is); the fragment is dropped. Works on text that
/// does not parse as a URL too (a configuration error must not echo a password either).
pub fn url(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    // Without "://" nothing says where a host ends: all before the query counts as one.
    let separators: &[char] = if scheme.is_empty() { &['?'] } else { &['/', '?'] };
    let authority_end = rest.find(separators).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let query = query.map_or(String::new(), |q| {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None if p.is_empty() => String::new(),
                None => "***".to_string(),
            })
            .collect();
        format!("?{}", params.join("&"))
    });
    format!("{scheme}{host}{path}{query}")
}

/// An HTTP client error and its causes, one after the other, without the request URL reqwest
/// puts in its message: the caller names the server by its redacted [`url`].
///
/// The cut is made in the text, not with `reqwest::Error::without_url`, because the search sink's
/// errors come wrapped by the `elasticsearch` crate (over reqwest 0.12, a type cdc cannot take
/// out of it); a unit test holds both crates' messages to it.
pub fn http_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let text = match text.find(" for url (") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        // The elasticsearch crate's error prints the reqwest error it wraps, then names it as its source.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_hidden() {
        assert_eq!(url("https://user:pa55@node:9200/"), "https://***@node:9200/");
        assert_eq!(url("https://tok3n@hooks.example/x"), "https://***@hooks.example/x");
        assert_eq!(
            url("https://hooks.example/in?token=abc&v=2&flag#frag"),
            "https://hooks.example/in?token=***&v=***&***"
        );
        assert_eq!(url("http://127.0.0.1:9200"), "http://127.0.0.1:9200");
        // Not a URL cdc can use, still no password.
        assert_eq!(url("htp//u:secret@host"), "***@host");
    }

    /// Both HTTP clients put the request URL in their message; neither survives.
    #[tokio::test]
    async fn http_errors_lose_the_url_with_its_secrets() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = format!("http://u:UrlPass1@127.0.0.1:{port}/hook?token=QueryTok2");
        let reqwest_error = reqwest::Client::new().post(&target).send().await.unwrap_err();
        assert!(reqwest_error.to_string().contains("QueryTok2"), "reqwest names the URL");
        let config = crate::sinks::search::SearchConfig {
            url: Some(target.clone()),
            ..toml::from_str("").unwrap()
        };
        let service = crate::sinks::search::service::Service::new(&config).unwrap();
        let search_error = service.get("/?token=QueryTok2").await.unwrap_err();
        for text in [
            http_error(&reqwest_error),
            search_error.to_string(),
            format!("{search_error:#}"),
        ] {
            assert!(!text.contains("UrlPass1") && !text.contains("QueryTok2"), "{text}");
            assert!(text.contains("error sending request"), "the cause is kept: {text}");
        }
        assert!(
            search_error
                .to_string()
                .starts_with(&format!("cannot reach http://***@127.0.0.1:{port}/hook?token=***: ")),
            "the node is named, redacted: {search_error}"
        );
        assert_eq!(service.url, format!("http://***@127.0.0.1:{port}/hook?token=***"));
    }
}
