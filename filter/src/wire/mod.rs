//! Provider wire types, separate from translation.

pub mod anthropic;
pub mod openai;
