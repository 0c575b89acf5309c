//! Provider wire types, separate from translation.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
