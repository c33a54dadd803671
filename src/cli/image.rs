//! `skiff images` and `skiff image pull|import|ls|rm|prune`: the node's image store, as
//! `docker pull`, `docker images`, `docker load`, `docker rmi` and `docker image prune -a` show it.
//!
//! These commands open the runtime's image store under `--data-dir` directly, also while
//! `skiff server` runs there: the store's file locks order them with the server's own pulls and
//! container starts (see skiff-runtime's image/store.rs), and an image counts as used while any
//! container the runtime holds (running or exited, i.e. until its pod is deleted) runs on it.

use std::io::Write;
use std::path::{Path, PathBuf};

mod pull;

use anyhow::{Context, bail, ensure};
use clap::{Args, Subcommand};
use skiff_runtime::{ImageManager, Removal, image_display_name, image_short_id};

#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// The data dir of the node (what `skiff server --data-dir` was given).
    #[arg(long, short = 'd', env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff", global = true)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only show image IDs.
    #[arg(long, short)]
    pub quiet: bool,
    /// Only images of this repository (`busybox`), or this repository and tag (`busybox:1.36`).
    pub repository: Option<String>,
}

/// `skiff images`
#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub list: ListArgs,
}

/// `skiff image …`
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub data: DataDir,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `skiff pull`
#[derive(Debug, Clone, Args)]
pub struct PullCommandArgs {
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub pull: PullArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// The image: `busybox`, `busybox:1.36`, `registry.example:5000/app@sha256:…`.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Print only the image's full reference, no progress.
    #[arg(long, short)]
    pub quiet: bool,
    /// User name for the image's own registry (else `registries.yaml`'s credentials for it).
    #[arg(long, short, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password for --username from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (or the mirrors of `<data-dir>/registries.yaml`, with the
    /// credentials it gives) into the node's image store, showing each layer's progress.
    Pull(PullArgs),
    /// Import `docker save` tarballs or OCI image layout tarballs (plain or gzip'd; `-` reads
    /// one from standard input); their tags become image names that pods can use with
    /// imagePullPolicy IfNotPresent or Never.
    #[command(alias = "load")]
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List images (as `skiff images`).
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove images by name, ID or ID prefix. An image that a container uses is refused; an
    /// image's layers go with its last name.
    #[command(alias = "remove", alias = "rmi")]
    Rm {
        /// Remove an ID's names even when they span several repositories.
        #[arg(long, short)]
        force: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Give an image (by name, ID or ID prefix) another name, as `docker tag` does.
    Tag {
        #[arg(value_name = "SOURCE")]
        source: String,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Remove every image no container uses, and print the space reclaimed.
    Prune,
}

pub fn run_images(args: ImagesArgs) -> anyhow::Result<()> {
    list(&open(&args.data.data_dir)?, &args.list, &mut std::io::stdout().lock())
}

pub fn run_pull(args: PullCommandArgs) -> anyhow::Result<()> {
    pull::run(&args.data.data_dir, args.pull)
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    if let ImageCommand::Pull(pull_args) = args.command {
        return pull::run(&args.data.data_dir, pull_args);
    }
    let manager = open(&args.data.data_dir)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ImageCommand::Pull(_) => unreachable!("handled above: it writes to the terminal itself"),
        ImageCommand::Import { files } => import(&manager, &files, &mut out),
        ImageCommand::Ls(list_args) => list(&manager, &list_args, &mut out),
        ImageCommand::Rm { force, images } => remove(&manager, &images, force, &mut out),
        ImageCommand::Tag { source, target } => {
            manager.tag(&source, &target)?;
            Ok(())
        }
        ImageCommand::Prune => prune(&manager, &mut out),
    }
}

fn open(data_dir: &Path) -> anyhow::Result<ImageManager> {
    ensure!(
        data_dir.is_dir(),
        "data dir {} does not exist: pass the --data-dir of `skiff server` (or set SKIFF_DATA_DIR)",
        data_dir.display()
    );
    ImageManager::open(&data_dir.join("runtime"))
        .with_context(|| format!("opening the image store of {}", data_dir.display()))
}

fn import(manager: &ImageManager, files: &[PathBuf], out: &mut impl Write) -> anyhow::Result<()> {
    for file in files {
        // An archive on standard input (`docker save busybox | skiff image import -`) is read
        // into a temp file first: importing needs to find its parts by name.
        let _stdin_copy;
        let file = if file.as_os_str() == "-" {
            _stdin_copy = StdinCopy::new()?;
            _stdin_copy.0.clone()
        } else {
            ensure!(file.is_file(), "{}: no such file", file.display());
            file.clone()
        };
        let file = &file;
        let images = manager.import(file).with_context(|| format!("importing {}", file.display()))?;
        for image in images {
            if image.reference.starts_with("sha256:") {
                writeln!(out, "Loaded image ID: {}", image.id)?;
            } else {
                let (repository, tag) = image_display_name(&image.reference);
                writeln!(out, "Loaded image: {repository}:{tag}")?;
            }
        }
    }
    Ok(())
}

/// Standard input in a private temp file, removed when dropped.
struct StdinCopy(PathBuf);

impl StdinCopy {
    fn new() -> anyhow::Result<StdinCopy> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("skiff-image-import-{}.tar", std::process::id()));
        let copy = StdinCopy(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy.0)
            .with_context(|| format!("creating {}", copy.0.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file).context("reading the archive from standard input")?;
        Ok(copy)
    }
}

impl Drop for StdinCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn list(manager: &ImageManager, args: &ListArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut rows: Vec<[String; 4]> = Vec::new();
    for image in manager.list() {
        let (repository, tag) = image_display_name(&image.reference);
        if let Some(filter) = &args.repository {
            let wanted = match filter.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                Some((r, t)) => repository == r && tag == t,
                None => &repository == filter,
            };
            if !wanted {
                continue;
            }
        }
        let size = human_size(manager.size_of(&image));
        rows.push([repository, tag, image_short_id(&image.id).to_string(), size]);
    }
    rows.sort();
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for row in rows.iter().filter(|r| seen.insert(r[2].clone())) {
            writeln!(out, "{}", row[2])?;
        }
        return Ok(());
    }
    let header = ["REPOSITORY", "TAG", "IMAGE ID", "SIZE"].map(String::from);
    write!(out, "{}", table(&header, &rows))?;
    Ok(())
}

fn remove(manager: &ImageManager, keys: &[String], force: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if manager.busy() {
        eprintln!("waiting for the image pulls and container starts in progress to finish…");
    }
    let mut failed = 0;
    for (key, result) in keys.iter().zip(manager.remove(keys, force)?) {
        match result {
            Ok(removals) => {
                for r in removals {
                    match r {
                        Removal::Untagged(name) => writeln!(out, "Untagged: {name}")?,
                        Removal::Deleted(id) => writeln!(out, "Deleted: {id}")?,
                    }
                }
            }
            Err(err) => {
                failed += 1;
                out.flush()?;
                eprintln!("error: {key}: {err}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images not removed", keys.len());
    }
    Ok(())
}

fn prune(manager: &ImageManager, out: &mut impl Write) -> anyhow::Result<()> {
    if manager.busy() {
        eprintln!("waiting for the image pulls and container starts in progress to finish…");
    }
    let reclaimed = manager.prune()?;
    if !reclaimed.removed.is_empty() {
        writeln!(out, "Deleted Images:")?;
        for r in &reclaimed.removed {
            match r {
                Removal::Untagged(name) => writeln!(out, "untagged: {name}")?,
                Removal::Deleted(id) => writeln!(out, "deleted: {id}")?,
            }
        }
        writeln!(out)?;
    }
    writeln!(out, "Total reclaimed space: {}", human_size(reclaimed.bytes))?;
    Ok(())
}

/// Columns as Docker's tabwriter sets them: each at least 10 wide, 3 spaces apart.
fn table(header: &[String; 4], rows: &[[String; 4]]) -> String {
    let mut widths = [0; 4];
    for row in std::iter::once(header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count() + 3).max(10);
        }
    }
    let mut text = String::new();
    for row in std::iter::once(header).chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}", width = widths[i]));
            }
        }
        text.push('\n');
    }
    text
}

/// Docker's sizes: decimal units, three significant digits (`4.26MB`, `123kB`, `0B`).
fn human_size(bytes: u64) -> String {
    human_size_digits(bytes, 3)
}

/// Decimal units with `digits` significant digits (Docker's progress shows four: `2.152MB`).
fn human_size_digits(bytes: u64, digits: usize) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let integer_digits = if size < 1.0 { 1 } else { size.log10().floor() as usize + 1 };
    let decimals = digits.saturating_sub(integer_digits);
    let mut text = format!("{size:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn sizes_read_like_docker_images() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234), "1.23kB");
        assert_eq!(human_size(100_000), "100kB");
        assert_eq!(human_size(4_261_234), "4.26MB");
        assert_eq!(human_size(1_200_000_000), "1.2GB");
    }

    #[test]
    fn the_table_pads_columns_as_docker_does() {
        let header = ["REPOSITORY", "TAG", "IMAGE ID", "SIZE"].map(String::from);
        let rows = [["busybox", "1.36", "0123456789ab", "4.26MB"].map(String::from)];
        assert_eq!(
            table(&header, &rows),
            "REPOSITORY   TAG       IMAGE ID       SIZE\nbusybox      1.36      0123456789ab   4.26MB\n"
        );
    }

    #[test]
    fn the_data_dir_is_taken_before_or_after_the_subcommand() {
        for argv in [
            &["skiff", "image", "--data-dir", "/d", "rm", "busybox"][..],
            &["skiff", "image", "rm", "-f", "busybox", "-d", "/d"],
        ] {
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Image(args) => {
                    assert_eq!(args.data.data_dir, PathBuf::from("/d"));
                    assert!(matches!(args.command, ImageCommand::Rm { images, .. } if images == ["busybox"]));
                }
                other => panic!("parsed as {other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["skiff", "image", "import"]).is_err(), "import needs a file");
    }

    #[test]
    fn pull_is_an_image_subcommand_and_a_verb_of_its_own() {
        match Cli::try_parse_from(["skiff", "pull", "-q", "busybox:1.36", "-d", "/d"]).unwrap().command {
            Command::Pull(args) => {
                assert_eq!(
                    (args.data.data_dir, args.pull.image, args.pull.quiet),
                    ("/d".into(), "busybox:1.36".into(), true)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let argv = ["skiff", "image", "pull", "--username", "u", "--password-stdin", "busybox"];
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Image(ImageArgs { command: ImageCommand::Pull(args), .. }) => {
                assert_eq!((args.username.as_deref(), args.password_stdin), (Some("u"), true));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["skiff", "pull", "--username", "u", "busybox"]).is_err(),
            "a user name needs --password-stdin"
        );
    }

    #[test]
    fn a_missing_image_or_data_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let manager = open(&dir.path().join("data")).unwrap();
        let mut out = Vec::new();
        let err = remove(&manager, &["busybox:nope".into()], false, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "1 of 1 images not removed");
        let err = open(&dir.path().join("missing")).err().unwrap().to_string();
        assert!(err.contains("does not exist: pass the --data-dir"), "{err}");
    }
}
