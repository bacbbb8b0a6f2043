//! `tasks`: look at the built-in tasks and check dataset files, from the command line.
//!
//! ```sh
//! tasks generate --task kb-qa --seed 0 --what corpus > corpus.jsonl   # a search corpus
//! tasks generate --task arith --what demos | head -3                    # demonstrations
//! tasks load --format gsm8k train.jsonl                                 # counts, bad lines
//! tasks load --format hotpotqa dev.json --corpus-out corpus.jsonl       # contexts as corpus
//! ```
//!
//! Output is JSON lines on stdout; reports go to stderr. Exit codes: 0 done, 1 a file could not
//! be read or written, 2 bad flags.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tasks::datasets::{self, Loaded};
use tasks::synthetic;

/// The built-in tasks and dataset files of paretopo.
#[derive(Debug, Parser)]
#[command(name = "tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a built-in task's questions, demonstrations or corpus as JSON lines.
    Generate {
        /// The task: `arith` or `kb-qa`.
        #[arg(long)]
        task: String,
        /// The seed (a run uses `run.seed`).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// What to print.
        #[arg(long, value_enum, default_value_t = What::Questions)]
        what: What,
    },
    /// Load a dataset file, report its good and bad records, and print the good ones as
    /// JSON lines (`id`, `prompt`, `answer`, `category`).
    Load {
        /// The file's format.
        #[arg(long, value_enum)]
        format: Format,
        /// The file.
        file: PathBuf,
        /// Also write the examples' context passages (HotpotQA) as a search corpus here.
        #[arg(long)]
        corpus_out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    /// `{"id", "prompt", "answer", "category"}`, the generic JSONL format.
    Questions,
    /// `{"example_id", "category", "prompt", "segments": [{"text", "generated"}]}`.
    Demos,
    /// `{"id", "title", "text"}`, what `tool_server.corpus` reads.
    Corpus,
    /// The extra tokens a synthetic tokenizer gives one id each, one JSON string per line.
    Tokens,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// GSM8K JSONL: `question`, `answer` ending in `#### final`.
    Gsm8k,
    /// HotpotQA JSON: one array of records with `context` and `supporting_facts`.
    Hotpotqa,
    /// Generic JSONL: `prompt`, `answer`, optional `id`.
    Jsonl,
}

/// Writes `items` to `out` as JSON lines.
fn write_lines<T: serde::Serialize>(
    out: impl Write,
    items: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    for item in items {
        serde_json::to_writer(&mut out, &item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn print_lines<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    write_lines(std::io::stdout().lock(), items).context("writing to stdout")
}

fn question_line(e: &datasets::Example) -> serde_json::Value {
    serde_json::json!({"id": e.id, "prompt": e.question, "answer": e.answer, "category": e.category})
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate { task, seed, what } => {
            let data = synthetic::generate(&task, seed)?;
            match what {
                What::Questions => print_lines(data.examples.iter().map(question_line)),
                What::Demos => print_lines(&data.demonstrations),
                What::Corpus => print_lines(&data.corpus),
                What::Tokens => print_lines(&data.extra_tokens),
            }
        }
        Command::Load { format, file, corpus_out } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            let loaded: Loaded = match format {
                Format::Gsm8k => datasets::load_gsm8k(&text),
                Format::Jsonl => datasets::load_generic_jsonl(&text),
                Format::Hotpotqa => {
                    datasets::load_hotpotqa(&text).with_context(|| format!("{}", file.display()))?
                }
            };
            let unit = if matches!(format, Format::Hotpotqa) { "record" } else { "line" };
            for bad in &loaded.skipped {
                eprintln!("{}: {unit} {}: skipped: {}", file.display(), bad.position, bad.reason);
            }
            eprintln!(
                "{}: {} examples loaded, {} skipped",
                file.display(),
                loaded.examples.len(),
                loaded.skipped.len()
            );
            if let Some(path) = corpus_out {
                let corpus = datasets::corpus_of(&loaded.examples);
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("{}: cannot create", path.display()))?;
                write_lines(file, &corpus)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
                eprintln!("{}: {} passages", path.display(), corpus.len());
            }
            print_lines(loaded.examples.iter().map(question_line))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasks: {e:#}");
            ExitCode::FAILURE
        }
    }
}
