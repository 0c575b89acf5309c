//! The model list the gateway answers itself, built once from the configuration: `GET /v1/models`
//! in OpenAI's shape (rendered once) and `GET {anthropic_prefix}/v1/models` in Anthropic's (one
//! page per request, as Anthropic's API pages it).

use crate::api::query_param;
use crate::error::{ApiError, ErrorKind};
use crate::utc::Utc;

/// One model the gateway lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    pub id: String,
    /// OpenAI's `owned_by`.
    pub owned_by: String,
    /// Unix seconds: OpenAI's `created`, Anthropic's `created_at`.
    pub created: u64,
    /// Anthropic's `display_name`; the id when not configured.
    pub display_name: Option<String>,
}

/// `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`.
pub fn openai_body(models: &[ListedModel]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'a str,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let data = models
        .iter()
        .map(|m| Model { id: &m.id, object: "model", created: m.created, owned_by: &m.owned_by })
        .collect();
    serde_json::to_vec(&List { object: "list", data }).unwrap_or_else(|_| br#"{"object":"list","data":[]}"#.to_vec())
}

/// Anthropic's default and largest page (`limit`).
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 1000;

/// One page of Anthropic's `GET /v1/models`: `limit` (1..=1000, default 20), and `after_id` or
/// `before_id` (the `first_id`/`last_id` of a page) to walk the list as Anthropic's SDKs do.
pub fn anthropic_page(models: &[ListedModel], query: &str) -> Result<Vec<u8>, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_request", message);
    let limit = match query_param(query, "limit") {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..=MAX_PAGE) => n,
            _ => return Err(invalid(format!("limit: must be an integer from 1 to {MAX_PAGE}, not {text:?}"))),
        },
    };
    let position = |name: &str, id: &str| {
        models
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| invalid(format!("{name}: {id:?} is not a model this gateway lists")))
    };
    let (start, end, has_more) = match (query_param(query, "after_id"), query_param(query, "before_id")) {
        (Some(_), Some(_)) => return Err(invalid("give after_id or before_id, not both".into())),
        (Some(after), None) => {
            let start = position("after_id", &after)? + 1;
            let end = start.saturating_add(limit).min(models.len());
            (start, end, end < models.len())
        }
        (None, Some(before)) => {
            let end = position("before_id", &before)?;
            let start = end.saturating_sub(limit);
            (start, end, start > 0)
        }
        (None, None) => {
            let end = limit.min(models.len());
            (0, end, end < models.len())
        }
    };
    let page = models.get(start..end).unwrap_or_default();

    #[derive(serde::Serialize)]
    struct Model<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: &'a str,
        display_name: &'a str,
        created_at: String,
    }
    #[derive(serde::Serialize)]
    struct Page<'a> {
        data: Vec<Model<'a>>,
        has_more: bool,
        first_id: Option<&'a str>,
        last_id: Option<&'a str>,
    }
    let data = page
        .iter()
        .map(|m| Model {
            kind: "model",
            id: &m.id,
            display_name: m.display_name.as_deref().unwrap_or(&m.id),
            created_at: Utc::from_unix(m.created).rfc3339(),
        })
        .collect();
    let body = Page {
        data,
        has_more,
        first_id: page.first().map(|m| m.id.as_str()),
        last_id: page.last().map(|m| m.id.as_str()),
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::new(500, ErrorKind::Server, "internal", format!("model list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn models(n: usize) -> Vec<ListedModel> {
        (0..n)
            .map(|i| ListedModel {
                id: format!("m{i}"),
                owned_by: "llmgw".into(),
                created: 1_700_000_000,
                display_name: (i == 0).then(|| "Model Zero".into()),
            })
            .collect()
    }

    fn page(models: &[ListedModel], query: &str) -> Value {
        serde_json::from_slice(&anthropic_page(models, query).unwrap()).unwrap()
    }

    fn ids(v: &Value) -> Vec<&str> {
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn anthropic_shape() {
        assert_eq!(
            page(&models(2), ""),
            json!({"data":[
                {"type":"model","id":"m0","display_name":"Model Zero","created_at":"2023-11-14T22:13:20Z"},
                {"type":"model","id":"m1","display_name":"m1","created_at":"2023-11-14T22:13:20Z"}],
              "has_more":false,"first_id":"m0","last_id":"m1"})
        );
        assert_eq!(page(&[], ""), json!({"data":[],"has_more":false,"first_id":null,"last_id":null}));
    }

    #[test]
    fn anthropic_pages_walk_the_list_both_ways() {
        let list = models(25);
        let first = page(&list, "");
        assert_eq!((ids(&first).len(), &first["has_more"], &first["last_id"]), (20, &json!(true), &json!("m19")));
        let next = page(&list, "?after_id=m19&limit=20");
        assert_eq!((ids(&next), &next["has_more"]), (vec!["m20", "m21", "m22", "m23", "m24"], &json!(false)));
        let back = page(&list, "?limit=3&before_id=m20");
        assert_eq!((ids(&back), &back["has_more"]), (vec!["m17", "m18", "m19"], &json!(true)));
        assert_eq!(ids(&page(&list, "?before_id=m2")), vec!["m0", "m1"]);
        assert_eq!(page(&list, "?before_id=m2")["has_more"], false);
        // Ids are percent-decoded.
        let odd = vec![ListedModel { id: "claude@2024 x".into(), ..models(1).remove(0) }, models(2).remove(1)];
        assert_eq!(ids(&page(&odd, "?after_id=claude%402024+x")), vec!["m1"]);
    }

    #[test]
    fn anthropic_page_refuses_what_it_cannot_honour() {
        let list = models(3);
        for query in ["?limit=0", "?limit=1001", "?limit=x", "?after_id=nope", "?after_id=m0&before_id=m2"] {
            let e = anthropic_page(&list, query).unwrap_err();
            assert_eq!(e.status, 400, "{query}");
        }
    }

    #[test]
    fn openai_shape() {
        let v: Value = serde_json::from_slice(&openai_body(&models(1))).unwrap();
        assert_eq!(
            v,
            json!({"object":"list","data":[{"id":"m0","object":"model","created":1_700_000_000u64,"owned_by":"llmgw"}]})
        );
    }
}
