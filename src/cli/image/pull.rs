//! `skiff image pull` (`skiff pull`): pulls into the node's image store beside a running server
//! (the store's locks order the two) and prints what `docker pull` prints. On a terminal each
//! layer has one line, redrawn in place; without one (a pipe, CI) a line is printed only when a
//! layer changes state, and each download ends with its byte count, so logs hold no redraws.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_runtime::{PullEvent, PullProgress, Pulled, Reference, Registries, RegistryAuth};

use super::{PullArgs, human_size_digits};

pub fn run(data_dir: &Path, args: PullArgs) -> anyhow::Result<()> {
    let reference =
        Reference::parse(&args.image).with_context(|| format!("invalid reference format: {:?}", args.image))?;
    let manager = super::open(data_dir)?;
    // The server reads the same file at start; the CLI reads it at each pull, so an edit takes
    // effect here at once.
    let registries = Registries::load(&data_dir.join("registries.yaml"))?;
    let auth = match args.username {
        Some(username) => Some(RegistryAuth { username, password: password_from_stdin()? }),
        None => None,
    };
    let mode = if args.quiet {
        Mode::Quiet
    } else if std::io::stdout().is_terminal() {
        Mode::Terminal { bars: terminal_width().is_some_and(|w| w > 110) }
    } else {
        Mode::Plain
    };
    let mut out = std::io::stdout();
    if mode != Mode::Quiet {
        write!(out, "{}", header(&args.image, &reference))?;
        out.flush()?;
    }
    let display = Arc::new(Display::new(mode));
    let progress = (mode != Mode::Quiet).then(|| display.clone() as Arc<dyn PullProgress>);
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let result = tokio.block_on(manager.pull(&args.image, &registries, auth.as_ref(), progress));
    display.finish(result.as_ref().ok());
    let pulled = result?;
    if mode != Mode::Quiet {
        write!(out, "{}", summary(&reference, &pulled))?;
    }
    writeln!(out, "{reference}")?;
    Ok(())
}

/// As `docker login --password-stdin` reads it: the whole input, less one trailing newline.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading the password from standard input")?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password).to_string();
    ensure!(!password.is_empty(), "--password-stdin: standard input held no password");
    Ok(password)
}

/// The columns of the terminal on standard output.
fn terminal_width() -> Option<u16> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(size.ws_col)
}

/// `Using default tag: latest` when the input names neither tag nor digest, then
/// `<tag or digest>: Pulling from <repository>`.
fn header(input: &str, reference: &Reference) -> String {
    let last = input.rsplit('/').next().unwrap_or(input);
    let mut text = String::new();
    if !last.contains([':', '@']) {
        text.push_str("Using default tag: latest\n");
    }
    let version = reference.digest.as_deref().or(reference.tag.as_deref()).unwrap_or("latest");
    text.push_str(&format!("{version}: Pulling from {}\n", reference.repository));
    text
}

/// `Digest:` and `Status:` lines as Docker ends a pull.
fn summary(reference: &Reference, pulled: &Pulled) -> String {
    let status = if pulled.up_to_date { "Image is up to date for" } else { "Downloaded newer image for" };
    format!("Digest: {}\nStatus: {status} {}\n", pulled.digest, familiar(reference))
}

/// The reference as Docker shows it to people: without `docker.io/` and `library/`.
fn familiar(reference: &Reference) -> String {
    let full = reference.to_string();
    let rest = full.strip_prefix("docker.io/").map(|r| r.strip_prefix("library/").unwrap_or(r));
    rest.unwrap_or(&full).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    /// Lines redrawn in place; `bars` when the terminal is wide enough for Docker's 50-column bar.
    Terminal {
        bars: bool,
    },
    Plain,
}

/// Where a layer is, in Docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    PullingFsLayer,
    AlreadyExists,
    Downloading { current: u64, total: u64 },
    Verifying,
    DownloadComplete { bytes: u64 },
    Extracting { current: u64, total: u64 },
    PullComplete,
}

impl Status {
    /// The line on a terminal, with Docker's progress (`Downloading [==>   ]  1.2MB/3.4MB`).
    fn live(&self, bars: bool) -> String {
        match self {
            Status::Downloading { current, total } => format!("Downloading {}", progress(*current, *total, bars)),
            Status::Extracting { current, total } => format!("Extracting {}", progress(*current, *total, bars)),
            other => other.word().to_string(),
        }
    }

    /// The line without a terminal: no progress figures, the byte count once the download is whole.
    fn plain(&self) -> String {
        match self {
            Status::DownloadComplete { bytes } => format!("Download complete ({})", human_size_digits(*bytes, 4)),
            other => other.word().to_string(),
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Status::PullingFsLayer => "Pulling fs layer",
            Status::AlreadyExists => "Already exists",
            Status::Downloading { .. } => "Downloading",
            Status::Verifying => "Verifying Checksum",
            Status::DownloadComplete { .. } => "Download complete",
            Status::Extracting { .. } => "Extracting",
            Status::PullComplete => "Pull complete",
        }
    }
}

/// Docker's progress text: a 50-column bar when there is room, then `current/total`, the
/// current size padded to 8 columns.
fn progress(current: u64, total: u64, bar: bool) -> String {
    let numbers = format!("{:>8}/{}", human_size_digits(current, 4), human_size_digits(total, 4));
    if !bar || total == 0 {
        return numbers;
    }
    let filled = ((current as f64 / total as f64 * 100.0) as usize / 2).min(50);
    format!("[{}>{}] {numbers}", "=".repeat(filled), " ".repeat(50 - filled))
}

struct Layer {
    short: String,
    status: Status,
    bar: Option<ProgressBar>,
}

#[derive(Default)]
struct State {
    layers: Vec<Layer>,
    by_digest: HashMap<String, usize>,
    /// Every layer was present at resolve: Docker shows no layer lines for an image that is
    /// up to date, so they wait for the outcome.
    deferred: bool,
    multi: Option<MultiProgress>,
}

struct Display {
    mode: Mode,
    state: Mutex<State>,
}

impl Display {
    fn new(mode: Mode) -> Display {
        Display { mode, state: Mutex::new(State::default()) }
    }

    /// The lines to print (plain mode) for `event`, after applying it to the layers.
    fn apply(&self, state: &mut State, event: PullEvent) -> Vec<String> {
        let (digest, status) = match event {
            PullEvent::Resolved { layers, .. } => {
                let first = state.layers.is_empty();
                let mut added = Vec::new();
                for layer in layers {
                    if state.by_digest.contains_key(&layer.digest) {
                        continue;
                    }
                    let status = if layer.present { Status::AlreadyExists } else { Status::PullingFsLayer };
                    state.by_digest.insert(layer.digest.clone(), state.layers.len());
                    added.push(state.layers.len());
                    state.layers.push(Layer { short: short(&layer.digest), status, bar: None });
                }
                if first && state.layers.iter().all(|l| l.status == Status::AlreadyExists) {
                    state.deferred = true;
                    return Vec::new();
                }
                // A layer that needs downloading showed up: the deferred lines are due too.
                let to_show: Vec<usize> = if state.deferred { (0..state.layers.len()).collect() } else { added };
                state.deferred = false;
                return to_show.into_iter().filter_map(|i| self.show(state, i, true)).collect();
            }
            PullEvent::LayerExists { digest } => (digest, Status::AlreadyExists),
            PullEvent::Downloading { digest, current, total } => (digest, Status::Downloading { current, total }),
            PullEvent::Verifying { digest } => (digest, Status::Verifying),
            PullEvent::Downloaded { digest, bytes } => (digest, Status::DownloadComplete { bytes }),
            PullEvent::Extracting { digest, current, total } => (digest, Status::Extracting { current, total }),
            PullEvent::LayerDone { digest } => (digest, Status::PullComplete),
        };
        let Some(&i) = state.by_digest.get(&digest) else { return Vec::new() };
        let changed = state.layers[i].status.word() != status.word();
        state.layers[i].status = status;
        if state.deferred {
            return Vec::new();
        }
        self.show(state, i, changed).into_iter().collect()
    }

    /// Draws layer `i` (terminal), or returns its line when its state `changed` (plain).
    fn show(&self, state: &mut State, i: usize, changed: bool) -> Option<String> {
        match self.mode {
            Mode::Quiet => None,
            Mode::Plain => changed.then(|| format!("{}: {}", state.layers[i].short, state.layers[i].status.plain())),
            Mode::Terminal { bars } => {
                let multi = state
                    .multi
                    .get_or_insert_with(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
                    .clone();
                let layer = &mut state.layers[i];
                let bar = layer.bar.get_or_insert_with(|| {
                    let style = ProgressStyle::with_template("{prefix}: {msg}").expect("a valid template");
                    multi.add(ProgressBar::no_length().with_style(style).with_prefix(layer.short.clone()))
                });
                bar.set_message(layer.status.live(bars));
                None
            }
        }
    }

    /// Ends the drawing: terminal lines stay as they are; an image that turned out not up to
    /// date shows the layer lines held back.
    fn finish(&self, pulled: Option<&Pulled>) {
        let mut state = self.state.lock().expect("pull display poisoned by a panic");
        let mut lines = Vec::new();
        if state.deferred && pulled.is_some_and(|p| !p.up_to_date) {
            state.deferred = false;
            lines = (0..state.layers.len()).filter_map(|i| self.show(&mut state, i, true)).collect();
        }
        for layer in &state.layers {
            if let Some(bar) = &layer.bar {
                if pulled.is_some() { bar.finish() } else { bar.abandon() }
            }
        }
        print_lines(&lines);
    }
}

impl PullProgress for Display {
    fn event(&self, event: PullEvent) {
        let mut state = self.state.lock().expect("pull display poisoned by a panic");
        let lines = self.apply(&mut state, event);
        // Printed under the lock, so two layers' lines never interleave out of order.
        print_lines(&lines);
    }
}

fn print_lines(lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        // A closed pipe (`skiff pull … | head -1`) must not stop the pull.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Docker's layer ID: the first 12 hex digits of the blob digest.
fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..hex.len().min(12)].to_string()
}

#[cfg(test)]
mod tests {
    use skiff_runtime::LayerInfo;

    use super::*;

    fn layer(n: char, size: u64, present: bool) -> LayerInfo {
        LayerInfo { digest: format!("sha256:{}", n.to_string().repeat(64)), size, present }
    }

    fn digest(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn plain_lines(display: &Display, events: Vec<PullEvent>) -> Vec<String> {
        let mut state = display.state.lock().unwrap();
        events.into_iter().flat_map(|e| display.apply(&mut state, e)).collect()
    }

    #[test]
    fn without_a_terminal_only_state_changes_are_printed_with_the_byte_count_at_the_end() {
        let display = Display::new(Mode::Plain);
        let mut events = vec![PullEvent::Resolved {
            digest: digest('f'),
            layers: vec![layer('a', 3_400_000, false), layer('b', 10, true)],
        }];
        events.push(PullEvent::LayerExists { digest: digest('b') });
        for current in (0..=3_400_000).step_by(100_000).skip(1) {
            events.push(PullEvent::Downloading { digest: digest('a'), current, total: 3_400_000 });
        }
        events.push(PullEvent::Verifying { digest: digest('a') });
        events.push(PullEvent::Downloaded { digest: digest('a'), bytes: 3_400_000 });
        for current in [262_144, 524_288, 3_400_000] {
            events.push(PullEvent::Extracting { digest: digest('a'), current, total: 3_400_000 });
        }
        events.push(PullEvent::LayerDone { digest: digest('a') });
        assert_eq!(
            plain_lines(&display, events),
            [
                "aaaaaaaaaaaa: Pulling fs layer",
                "bbbbbbbbbbbb: Already exists",
                "aaaaaaaaaaaa: Downloading",
                "aaaaaaaaaaaa: Verifying Checksum",
                "aaaaaaaaaaaa: Download complete (3.4MB)",
                "aaaaaaaaaaaa: Extracting",
                "aaaaaaaaaaaa: Pull complete",
            ]
        );
    }

    #[test]
    fn an_image_whose_layers_are_all_present_shows_them_only_if_it_was_not_up_to_date() {
        let resolved = || PullEvent::Resolved { digest: digest('f'), layers: vec![layer('a', 5, true)] };
        let display = Display::new(Mode::Plain);
        assert!(plain_lines(&display, vec![resolved(), PullEvent::LayerExists { digest: digest('a') }]).is_empty());
        assert!(display.state.lock().unwrap().deferred);

        // A mirror failed and the registry's manifest needs a download: everything shows.
        let lines = plain_lines(
            &display,
            vec![PullEvent::Resolved { digest: digest('f'), layers: vec![layer('a', 5, true), layer('c', 5, false)] }],
        );
        assert_eq!(lines, ["aaaaaaaaaaaa: Already exists", "cccccccccccc: Pulling fs layer"]);
    }

    #[test]
    fn progress_reads_like_dockers() {
        assert_eq!(progress(1_234_000, 3_400_000, false), " 1.234MB/3.4MB");
        let with_bar = progress(1_700_000, 3_400_000, true);
        assert_eq!(with_bar, format!("[{}>{}]    1.7MB/3.4MB", "=".repeat(25), " ".repeat(25)));
        assert!(progress(3_400_000, 3_400_000, true).starts_with(&format!("[{}>]", "=".repeat(50))));
        assert_eq!(Status::Downloading { current: 0, total: 10 }.live(false), "Downloading       0B/10B");
    }

    #[test]
    fn header_and_summary_read_like_docker_pull() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(header("busybox", &r), "Using default tag: latest\nlatest: Pulling from library/busybox\n");
        let r = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
        assert_eq!(header("127.0.0.1:5000/app:v1", &r), "v1: Pulling from app\n");
        let image = skiff_runtime::Image {
            reference: r.to_string(),
            id: "sha256:c".into(),
            repo_digest: format!("127.0.0.1:5000/app@{}", digest('d')),
            config: Default::default(),
            layers: vec![],
            size: 1,
        };
        let pulled = Pulled { image, digest: digest('d'), up_to_date: false };
        assert_eq!(
            summary(&r, &pulled),
            format!("Digest: {}\nStatus: Downloaded newer image for 127.0.0.1:5000/app:v1\n", digest('d'))
        );
        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(familiar(&r), "busybox:1.36");
        assert_eq!(r.to_string(), "docker.io/library/busybox:1.36");
    }
}
