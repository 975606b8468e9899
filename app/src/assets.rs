//! Datasets shipped with the app (the files in `assets/datasets/`, compiled in so the binary
//! works from any folder).

/// `pun` training set: pun setups with their punchlines, prompts naming `<pun>`.
pub const PUN_TRAIN: &str = include_str!("../../assets/datasets/pun.train.jsonl");
/// `pun` held-out split (never trained on).
pub const PUN_HELDOUT: &str = include_str!("../../assets/datasets/pun.heldout.jsonl");
/// `literal` training set: plain sentences of similar shape and topics, prompts naming `<lit>`.
pub const LITERAL_TRAIN: &str = include_str!("../../assets/datasets/literal.train.jsonl");
/// `literal` held-out split.
pub const LITERAL_HELDOUT: &str = include_str!("../../assets/datasets/literal.heldout.jsonl");

/// A shipped dataset by name (`pun`, `pun.heldout`, `literal`, `literal.heldout`).
pub fn dataset(name: &str) -> Option<&'static str> {
    match name {
        "pun" | "pun.train" => Some(PUN_TRAIN),
        "pun.heldout" => Some(PUN_HELDOUT),
        "literal" | "literal.train" => Some(LITERAL_TRAIN),
        "literal.heldout" => Some(LITERAL_HELDOUT),
        _ => None,
    }
}
