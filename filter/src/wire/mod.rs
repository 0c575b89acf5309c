//! Provider wire types, separate from translation.

pub mod anthropic;
pub mod bedrock;
pub(crate) mod de;
pub mod gemini;
pub mod openai;
