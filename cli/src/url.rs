//! Base URLs as the provider SDKs take them (`OPENAI_BASE_URL`, a backend's `url`): scheme → TLS,
//! host, port, and the path, which becomes the backend's path prefix.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    /// Hostname, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// The path without a trailing `/`; empty when the URL has none.
    pub path: String,
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<BaseUrl, String> {
        let text = text.trim();
        let (tls, rest) = if let Some(r) = strip_prefix_ci(text, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(text, "http://") {
            (false, r)
        } else {
            return Err(format!("{text:?}: expected a URL starting with http:// or https://"));
        };
        if rest.contains(['?', '#']) {
            return Err(format!("{text:?}: a base URL must not have a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("{text:?}: credentials in the URL are not supported; use the backend's auth"));
        }
        let (host, port) = split_host_port(authority).map_err(|e| format!("{text:?}: {e}"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?}: the path must not contain spaces or control characters"));
        }
        Ok(BaseUrl { tls, host, port, path: path.trim_end_matches('/').to_string() })
    }

    /// `host:port` as a Host header, the port left out when it is the scheme's default.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port, self.tls)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// `host[:port]` for a Host header; IPv6 in brackets.
pub fn authority(host: &str, port: u16, tls: bool) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    if port == if tls { 443 } else { 80 } {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; checks the host's characters and the port.
pub fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or("IPv6 address without a closing `]`")?;
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        match &rest[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("unexpected text after `]`")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if !host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("{host:?} is not a valid host name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("port {p:?} is not a number between 1 and 65535")),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// True when `host` is an IP address literal (no DNS needed).
pub fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> BaseUrl {
        BaseUrl::parse(s).unwrap()
    }

    #[test]
    fn schemes_ports_and_paths() {
        let u = url("https://api.openai.com/v1");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (true, "api.openai.com", 443, "/v1"));
        assert_eq!(u.authority(), "api.openai.com");
        let u = url("http://localhost:11434/v1/");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "localhost", 11434, "/v1"));
        assert_eq!(u.authority(), "localhost:11434");
        let u = url("HTTP://Example.COM");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "example.com", 80, ""));
        let u = url("https://api.router.tetrate.ai/v1/openai/v1");
        assert_eq!(u.path, "/v1/openai/v1");
        let u = url("https://gw.example.com:8443/");
        assert_eq!((u.port, u.path.as_str(), u.authority().as_str()), (8443, "", "gw.example.com:8443"));
        assert_eq!(u.to_string(), "https://gw.example.com:8443");
    }

    #[test]
    fn ip_literals() {
        let u = url("http://127.0.0.1:8000");
        assert!(is_ip(&u.host));
        let u = url("http://[::1]:8000/v1");
        assert_eq!((u.host.as_str(), u.port), ("::1", 8000));
        assert_eq!(u.authority(), "[::1]:8000");
        assert!(is_ip("::1") && !is_ip("api.openai.com"));
    }

    #[test]
    fn rejects_bad_urls() {
        for (bad, why) in [
            ("api.openai.com/v1", "http:// or https://"),
            ("ftp://x", "http:// or https://"),
            ("https://", "host is empty"),
            ("https://:443", "host is empty"),
            ("http://host:0", "port"),
            ("http://host:99999", "port"),
            ("http://host:abc", "port"),
            ("http://user:pw@host", "credentials"),
            ("http://host/v1?x=1", "query"),
            ("http://ho st/", "valid host"),
            ("http://[::1/", "closing"),
            ("http://[zz]:80", "IPv6"),
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
