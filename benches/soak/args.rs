//! Command line, and the descriptor arithmetic that decides how many node pairs are needed.

use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
soak: node pairs holding N tunnels under R new connections/s of churn, sampled over time

usage: soak [--short] [options]

  --tunnels N        long-lived tunnels, spread over the pairs (10000)
  --rate R           new short connections per second, spread over the pairs (1000)
  --duration S       seconds of churn (600)
  --sample-every S   seconds between samples (10)
  --warmup S         seconds of churn left out of the verdict (60)
  --pairs P          inbound+outbound node pairs (2; see the descriptor note in README)
  --io DRIVER        uring | epoll (uring)
  --ping-every S     seconds between a long-lived tunnel's pings (30)
  --osgate PATH      the osgate binary (default: next to this binary)
  --keep             keep the temporary directory (configs, node logs)
  --short            a 30 s check: 1,000 tunnels, 200/s, 1 pair, samples every 5 s
";

#[derive(Debug, Clone)]
pub struct Args {
    pub tunnels: usize,
    pub rate: u64,
    pub duration: Duration,
    pub sample_every: Duration,
    pub warmup: Duration,
    pub pairs: usize,
    pub io: String,
    pub ping_every: Duration,
    pub osgate: Option<PathBuf>,
    pub keep: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            tunnels: 10_000,
            rate: 1_000,
            duration: Duration::from_secs(600),
            sample_every: Duration::from_secs(10),
            warmup: Duration::from_secs(60),
            pairs: 2,
            io: "uring".into(),
            ping_every: Duration::from_secs(30),
            osgate: None,
            keep: false,
        }
    }
}

impl Args {
    /// `None` after printing the help.
    pub fn parse(argv: &[String]) -> Result<Option<Args>, String> {
        let mut args = Args::default();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
            };
            let number = |text: String| {
                text.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag}: `{text}` is not a positive number"))
            };
            match flag.as_str() {
                "--tunnels" => args.tunnels = number(value()?)? as usize,
                "--rate" => args.rate = number(value()?)?,
                "--duration" => args.duration = Duration::from_secs(number(value()?)?),
                "--sample-every" => args.sample_every = Duration::from_secs(number(value()?)?),
                "--warmup" => {
                    let text = value()?;
                    let secs = text
                        .parse()
                        .map_err(|_| format!("--warmup: `{text}` is not a number"))?;
                    args.warmup = Duration::from_secs(secs);
                }
                "--pairs" => args.pairs = number(value()?)? as usize,
                "--io" => args.io = value()?,
                "--ping-every" => args.ping_every = Duration::from_secs(number(value()?)?),
                "--osgate" => args.osgate = Some(value()?.into()),
                "--keep" => args.keep = true,
                "--short" => args.short(),
                // Passed by `cargo bench` to harness-less targets.
                "--bench" => {}
                "-h" | "--help" => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
            }
        }
        if !matches!(args.io.as_str(), "uring" | "epoll") {
            return Err(format!("--io: `{}` is not uring or epoll", args.io));
        }
        Ok(Some(args))
    }

    fn short(&mut self) {
        self.tunnels = 1_000;
        self.rate = 200;
        self.duration = Duration::from_secs(30);
        self.sample_every = Duration::from_secs(5);
        self.warmup = Duration::from_secs(10);
        self.pairs = 1;
    }

    /// Churn connections open at once, at most: three seconds' worth (on a shared machine
    /// one exchange can take a second or more of scheduling delay). Beyond that a due
    /// connection is skipped and counted, so a saturated machine shows as a lower rate.
    pub fn max_in_flight(&self) -> usize {
        (self.rate as usize * 3).max(100)
    }

    /// Every process must fit under the hard descriptor limit: a node holds two descriptors
    /// per tunnel through it (client side and far side); the load generator and the backend
    /// one each.
    pub fn check_budget(&self, hard: u64) -> Result<(), String> {
        const SPARE: usize = 200;
        let per_pair = self.tunnels.div_ceil(self.pairs);
        let node = 2 * (per_pair + self.max_in_flight().div_ceil(self.pairs)) + SPARE;
        let ends = self.tunnels + self.max_in_flight() + SPARE;
        let need = node.max(ends) as u64;
        match need <= hard {
            true => Ok(()),
            false => Err(format!(
                "descriptor limit {hard} is too low: a node needs {node} and the load generator \
                 and backend {ends} each; use more --pairs or fewer --tunnels"
            )),
        }
    }
}
