//! The chart a reader is asked to trust, checked as a reader sees it: rendered to PNG by
//! `rsvg-convert` (Debian `librsvg2-bin`) and looked at pixel by pixel.

use std::path::Path;
use std::process::Command;

/// The chart's layout (loadtest's `chart.rs`): 720 × 480, plot areas at these rows.
const SIZE: (u32, u32) = (720, 480);
const LATENCY_ROWS: std::ops::Range<u32> = 48..200;
const RATE_ROWS: std::ops::Range<u32> = 268..432;
/// Plot areas' columns (legends are above them).
const PLOT_COLUMNS: std::ops::Range<u32> = 73..700;
const LATENCY: [u8; 3] = [0x1f, 0x5f, 0xbf];
const COMPLETED: [u8; 3] = [0x1f, 0x9f, 0x4f];
const ERRORS: [u8; 3] = [0xd0, 0x20, 0x2a];

/// What the chart must show.
pub(crate) struct Expect {
    pub completed: bool,
    pub errors: bool,
    /// The report's error kinds (`"429 rate_limited"`): each must be named in the legend.
    pub error_kinds: Vec<String>,
}

struct Image {
    width: u32,
    height: u32,
    /// 3 (RGB) or 4 (RGBA).
    channels: u32,
    pixels: Vec<u8>,
}

impl Image {
    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * self.channels) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Pixels of `colour` (give or take anti-aliasing) in a region.
    fn count(&self, colour: [u8; 3], rows: std::ops::Range<u32>, columns: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| columns.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = self.pixel(x, y);
                p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 24)
            })
            .count()
    }
}

fn render(svg: &Path) -> Image {
    let png = svg.with_extension("png");
    let out = Command::new("rsvg-convert")
        .arg("--output")
        .arg(&png)
        .arg(svg)
        .output()
        .expect("rsvg-convert (Debian librsvg2-bin; .ci/run installs it)");
    assert!(
        out.status.success(),
        "rsvg-convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("rsvg-convert wrote {other:?}"),
    };
    Image {
        width: info.width,
        height: info.height,
        channels,
        pixels,
    }
}

/// Renders `svg` and checks it: its size, every tenth of its height drawn on, the axes
/// labelled with units, the latency curve, and the completed and failed requests per second.
pub(crate) fn check(svg: &Path, expect: &Expect) {
    let text = std::fs::read_to_string(svg).unwrap();
    for label in [
        "latency (ms)",
        "percentile of requests",
        "requests per second",
        "(s)",
        "errors",
    ] {
        assert!(text.contains(label), "no {label:?} on the chart");
    }
    for kind in &expect.error_kinds {
        assert!(
            text.contains(&format!(">{kind}</text>")),
            "the legend does not name {kind:?}"
        );
    }
    let img = render(svg);
    // `KEEP_CHARTS=DIR` keeps each rendered chart for a human to look at.
    if let Some(dir) = std::env::var_os("KEEP_CHARTS") {
        let n = std::fs::read_dir(&dir).map_or(0, Iterator::count);
        std::fs::copy(
            svg.with_extension("png"),
            Path::new(&dir).join(format!("chart-{n}.png")),
        )
        .unwrap();
    }
    assert_eq!((img.width, img.height), SIZE);
    for band in 0..10 {
        let rows = band * SIZE.1 / 10..(band + 1) * SIZE.1 / 10;
        let drawn = rows
            .clone()
            .flat_map(|y| (0..SIZE.0).map(move |x| (x, y)))
            .filter(|&(x, y)| img.pixel(x, y).iter().any(|c| *c < 200))
            .count();
        assert!(
            drawn > 50,
            "rows {rows:?} of the chart are blank ({drawn} pixels drawn)"
        );
    }
    let latency = img.count(LATENCY, LATENCY_ROWS, PLOT_COLUMNS);
    assert!(latency > 300, "the latency curve is drawn ({latency} pixels)");
    let completed = img.count(COMPLETED, RATE_ROWS, PLOT_COLUMNS);
    assert_eq!(
        completed > 200,
        expect.completed,
        "completed requests drawn: {completed} pixels"
    );
    let errors = img.count(ERRORS, RATE_ROWS, PLOT_COLUMNS);
    assert_eq!(errors > 200, expect.errors, "errors drawn: {errors} pixels");
}
