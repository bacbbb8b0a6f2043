//! `tasks`: look at the built-in tasks and check dataset files, from the command line.
//!
//! ```sh
//! tasks generate --task kb-qa --seed 0 --what corpus > corpus.jsonl   # a search corpus
//! tasks generate --task arith --what demos | head -3                    # demonstrations
//! tasks load --format gsm8k train.jsonl                                 # counts, bad lines
//! tasks load --format hotpotqa dev.json --corpus-out corpus.jsonl       # contexts as corpus
//! tasks check --format gsm8k test.jsonl [--answers]                     # what a run would load
//! ```
//!
//! `generate` and `load` print JSON lines on stdout and reports on stderr; `check` prints its
//! report (or, with `--answers`, the answers) on stdout. Exit codes: 0 done, 1 a file could not
//! be read or written (`load`, `generate`), 2 bad flags, or a file `check` cannot use
//! (unreadable, empty, no usable record).

use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// Check a dataset file exactly as a run loads it: records loaded, records skipped (with
    /// their line, or index in a HotpotQA array, and why) and the kinds of the final answers.
    /// Exit 2 when the file cannot be read, is empty or has no usable record.
    Check {
        /// The file's format.
        #[arg(long, value_enum)]
        format: Format,
        /// The file.
        file: PathBuf,
        /// Print the extracted final answer of each loaded record, one per line in file order
        /// (the report then goes to stderr).
        #[arg(long)]
        answers: bool,
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

/// A file `tasks check` cannot use: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unusable(String);

/// Loads `file` in `format`, as a run does.
fn load_file(format: Format, file: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Unusable(format!("{}: cannot read: {e}", file.display())))?;
    Ok(match format {
        Format::Gsm8k => datasets::load_gsm8k(&text),
        Format::Jsonl => datasets::load_generic_jsonl(&text),
        Format::Hotpotqa => datasets::load_hotpotqa(&text)
            .map_err(|e| Unusable(format!("{}: {e}", file.display())))?,
    })
}

fn check(format: Format, file: &Path, answers: bool) -> anyhow::Result<()> {
    let loaded = load_file(format, file)?;
    let unit = if matches!(format, Format::Hotpotqa) { "record" } else { "line" };
    let mut report = format!(
        "{}: {} records loaded, {} skipped\n",
        file.display(),
        loaded.examples.len(),
        loaded.skipped.len()
    );
    for bad in &loaded.skipped {
        report.push_str(&format!("  {unit} {}: skipped: {}\n", bad.position, bad.reason));
    }
    let mut forms = std::collections::BTreeMap::from([
        ("integer", 0usize),
        ("decimal", 0),
        ("fraction", 0),
        ("text", 0),
    ]);
    for example in &loaded.examples {
        *forms.entry(datasets::answer_form(example)).or_default() += 1;
    }
    let order = ["integer", "decimal", "fraction", "text"];
    let kinds: Vec<String> = order.iter().map(|k| format!("{} {k}", forms[k])).collect();
    report.push_str(&format!("final answers: {}\n", kinds.join(", ")));
    if answers {
        eprint!("{report}");
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for example in &loaded.examples {
            writeln!(out, "{}", example.answer).context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")?;
    } else {
        print!("{report}");
    }
    if loaded.examples.is_empty() {
        let why = if loaded.skipped.is_empty() { "is empty" } else { "has no usable record" };
        return Err(Unusable(format!("{} {why}", file.display())).into());
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { format, file, answers } => check(format, &file, answers),
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
            // Exit 1 for `load`, as before `check` existed.
            let loaded = load_file(format, &file).map_err(|e| anyhow::anyhow!("{e:#}"))?;
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
            if e.is::<Unusable>() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
