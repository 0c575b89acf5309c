//! Provider wire types, separate from translation.

pub mod openai;
