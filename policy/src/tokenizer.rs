//! Text to token ids and back: a thin wrapper over a Hugging Face `tokenizer.json` (the
//! `tokenizers` crate), and the builder of the small character-level tokenizer our synthetic
//! tasks use.
//!
//! The synthetic tokenizer is a standard `tokenizer.json` in Qwen2's own form: byte-level BPE
//! (GPT-2's byte-to-character map, so a space is stored as `Ġ` and a newline as `Ċ`) with no
//! merges, so every character is one token, plus whole-word tokens for the tool-call tags.
//! `transformers` opens it with `AutoTokenizer` as a `Qwen2Tokenizer`, which rebuilds a
//! byte-level pipeline from the vocabulary, and gets the same ids. What this module does not do: chat
//! templates or prompt formats (the `tasks` crate owns those).

use std::path::Path;

use tokenizers::AddedToken;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// End of text in the synthetic tokenizer: the token that ends a sequence.
pub const EOS_ID: i64 = 0;
/// Padding in the synthetic tokenizer.
pub const PAD_ID: i64 = 1;
/// The replacement for characters outside the synthetic vocabulary.
pub const UNK_ID: i64 = 2;

const EOS: &str = "<|endoftext|>";
const PAD: &str = "<|pad|>";
const UNK: &str = "<|unk|>";

/// The tags of the tool-call text format, each one token in the synthetic tokenizer, so that the
/// model writes a tag in one step and stop strings match whole tokens.
pub const TOOL_TAGS: [&str; 6] =
    ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<answer>", "</answer>"];

/// A tokenizer failed to load, save, encode or decode.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(String);

/// A loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({} tokens)", self.vocab_size())
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// Writes a `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner.save(path, true).map_err(|e| TokenizerError(format!("{}: {e}", path.display())))
    }

    /// The character-level tokenizer of the synthetic tasks: end of text, padding and unknown,
    /// printable ASCII and newline, the [`TOOL_TAGS`], then `extra_tokens` (task-specific
    /// multi-character tokens such as a prompt prefix), in that order of ids.
    pub fn synthetic(extra_tokens: &[&str]) -> Result<Self, TokenizerError> {
        let mut words: Vec<String> = vec![EOS.into(), PAD.into(), UNK.into()];
        // Byte-level BPE stores bytes as GPT-2's printable stand-ins: printable ASCII is itself,
        // a space is U+0120 `Ġ`, a newline U+010A `Ċ` (256 + the byte's rank among the bytes
        // that are not printable).
        words.push("\u{120}".into());
        words.extend((b'!'..=b'~').map(|c| (c as char).to_string()));
        words.push("\u{10A}".into());
        words.extend(TOOL_TAGS.iter().map(|t| t.to_string()));
        for token in extra_tokens {
            if !words.iter().any(|w| w == token) {
                words.push(token.to_string());
            }
        }
        let vocab: tokenizers::models::bpe::Vocab =
            words.iter().enumerate().map(|(id, w)| (w.clone(), id as u32)).collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab, Vec::new())
            .unk_token(UNK.into())
            .build()
            .map_err(|e| TokenizerError(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<AddedToken> =
            [EOS, PAD, UNK].iter().map(|t| AddedToken::from(*t, true)).collect();
        inner.add_special_tokens(&special);
        // Multi-character words are added tokens: matched whole, before the per-character model.
        let multi: Vec<AddedToken> = words[3..]
            .iter()
            .filter(|w| w.chars().count() > 1)
            .map(|w| AddedToken::from(w.clone(), false))
            .collect();
        inner.add_tokens(&multi);
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| TokenizerError(format!("encode: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// The text of `ids`, special tokens included. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| TokenizerError(format!("bad token id {id}"))))
            .collect::<Result<_, _>>()?;
        self.inner.decode(&ids, false).map_err(|e| TokenizerError(format!("decode: {e}")))
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

/// The `tokenizer_config.json` that tells `transformers` which tokens end and pad a sequence.
pub fn synthetic_tokenizer_config() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_round_trips_and_keeps_tags_whole() {
        let tok = Tokenizer::synthetic(&["What is "]).expect("build");
        let text = "What is 12*7?<tool_call>{\"x\": 1}</tool_call>\n<answer>84</answer>";
        let ids = tok.encode(text).expect("encode");
        assert_eq!(tok.decode(&ids).expect("decode"), text);
        let open = tok.token_id("<tool_call>").expect("tag");
        assert_eq!(ids.iter().filter(|&&id| id == open).count(), 1);
        assert_eq!(ids[0], tok.token_id("What is ").expect("extra"));
        // Every other character is one token.
        assert_eq!(tok.encode("12*7").expect("encode").len(), 4);
        assert_eq!(tok.token_id("<|endoftext|>"), Some(EOS_ID));
    }

    #[test]
    fn unknown_characters_become_unk_and_save_load_keeps_ids() {
        let tok = Tokenizer::synthetic(&[]).expect("build");
        // Two UTF-8 bytes, neither in the vocabulary.
        assert_eq!(tok.encode("é").expect("encode"), vec![UNK_ID, UNK_ID]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).expect("save");
        let back = Tokenizer::from_file(&path).expect("load");
        let text = "</answer> 1+1";
        assert_eq!(back.encode(text).expect("encode"), tok.encode(text).expect("encode"));
        assert_eq!(back.vocab_size(), tok.vocab_size());
    }
}
