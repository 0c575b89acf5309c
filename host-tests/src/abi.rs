//! Proxy-wasm ABI 0.2.1 constants and wire formats, as proxy-wasm-rust-sdk 0.2.5 uses them.

/// `WasmResult` codes returned by host calls.
pub(crate) mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
}

/// Log levels, numbered as the ABI numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    HttpCallResponseBody,
    VmConfiguration,
    PluginConfiguration,
    /// Downstream/upstream data, gRPC buffers, call data: not part of an HTTP filter's world.
    Unsupported,
}

impl BufferType {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 | 3 | 5 | 8 => Self::Unsupported,
            4 => Self::HttpCallResponseBody,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
    /// gRPC metadata maps.
    Unsupported,
}

impl MapType {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 | 5 => Self::Unsupported,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Kinds of custom metrics (`proxy_define_metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Serializes header pairs the way the SDK's `deserialize_map` reads them:
/// `count: u32`, then `(key_len: u32, value_len: u32)` per pair, then each key and value
/// followed by a NUL byte. All integers little-endian.
pub(crate) fn serialize_pairs<'a>(pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses the serialized pairs format. `None` when the data is malformed (the guest sent
/// garbage); an empty input is an empty map, as in the SDK.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = read_u32(0)?;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let key_len = read_u32(4 + n * 8)?;
        let value_len = read_u32(8 + n * 8)?;
        let key = bytes.get(data_at..data_at.checked_add(key_len)?)?.to_vec();
        data_at += key_len + 1;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?.to_vec();
        data_at += value_len + 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// Property paths travel as their segments joined by NUL bytes.
pub(crate) fn parse_property_path(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":method", b"GET"), (b"x", b"")];
        let bytes = serialize_pairs(pairs.iter().copied());
        // Same layout as the SDK's own test vector.
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &[7, 0, 0, 0, 3, 0, 0, 0]);
        let back = deserialize_pairs(&bytes).unwrap_or_default();
        assert_eq!(back, vec![(b":method".to_vec(), b"GET".to_vec()), (b"x".to_vec(), vec![])]);
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 3]), None);
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
    }

    #[test]
    fn property_paths() {
        assert_eq!(parse_property_path(b"a\0b"), vec!["a", "b"]);
        assert_eq!(parse_property_path(b"llm_input_token"), vec!["llm_input_token"]);
    }
}
