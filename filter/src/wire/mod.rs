//! Provider wire types, separate from translation.

pub mod anthropic;
pub mod anthropic_view;
pub mod bedrock;
pub mod chat_view;
pub(crate) mod de;
pub mod gemini;
pub mod openai;
pub mod responses;
