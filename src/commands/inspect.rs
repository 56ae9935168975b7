//! `inspect FILE [--json]`: what a VHD is, without converting it.

use std::io::Write;

use serde::Serialize;

use crate::cli::InspectArgs;
use crate::error::Error;
use crate::image::extent::Extent;
use crate::image::vhd::{self, BatSummary, DynamicHeader, Footer, FooterSource, VhdImage};
use crate::output::units::human_bytes;

/// Extents listed in text output before "... and N more".
const TEXT_EXTENTS: usize = 20;

#[derive(Debug, Serialize)]
struct Report<'a> {
    file: String,
    file_size: u64,
    virtual_size: u64,
    footer: &'a Footer,
    footer_source: FooterSource,
    tail_footer_problem: Option<&'a str>,
    /// Bytes the CHS geometry addresses; less than virtual_size on Azure's footers.
    geometry_bytes: u64,
    dynamic: Option<DynamicReport<'a>>,
    allocated_bytes: u64,
    data_extents: usize,
    extents: &'a [Extent],
}

#[derive(Debug, Serialize)]
struct DynamicReport<'a> {
    header: &'a DynamicHeader,
    bitmap_size: u64,
    bat: &'a BatSummary,
}

pub fn run(args: &InspectArgs) -> Result<(), Error> {
    let path = &args.file;
    let src = super::open_vhd_file(path)?;
    let img = vhd::open(&src).map_err(|e| Error::from(e).context(path.display()))?;
    let report = report(&img, path.display().to_string());
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        out.write_all(text(&report).as_bytes())
    };
    written.map_err(|e| Error::failed(format!("writing to stdout: {e}")))
}

fn report(img: &VhdImage, file: String) -> Report<'_> {
    Report {
        file,
        file_size: img.file_len,
        virtual_size: img.virtual_size(),
        footer: &img.footer,
        footer_source: img.footer_source,
        tail_footer_problem: img.tail_footer_problem.as_deref(),
        geometry_bytes: img.footer.geometry.bytes(),
        dynamic: img.dynamic.as_ref().map(|(header, bat)| DynamicReport {
            header,
            bitmap_size: header.bitmap_size(),
            bat,
        }),
        allocated_bytes: img.extents.data_bytes(),
        data_extents: img.extents.data_extent_count(),
        extents: img.extents.extents(),
    }
}

fn text(r: &Report<'_>) -> String {
    use std::fmt::Write as _;
    let f = r.footer;
    let mut s = String::new();
    let _ = writeln!(s, "file:            {} ({} bytes)", r.file, r.file_size);
    let _ = writeln!(s, "type:            {:?}", f.disk_type);
    let _ = writeln!(
        s,
        "virtual size:    {} ({} bytes)",
        human_bytes(r.virtual_size),
        r.virtual_size
    );
    let _ = writeln!(s, "original size:   {} bytes", f.original_size);
    let _ = writeln!(
        s,
        "creator:         {:?} version {:#010x} on {:?}",
        f.creator_application, f.creator_version, f.creator_host_os
    );
    let short = if r.geometry_bytes < r.virtual_size {
        " (less than the virtual size: ignored)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "geometry:        {}/{}/{} C/H/S = {} bytes{short}",
        f.geometry.cylinders, f.geometry.heads, f.geometry.sectors_per_track, r.geometry_bytes
    );
    let _ = writeln!(s, "footer checksum: ok ({:#010x})", f.checksum);
    if r.footer_source == FooterSource::HeadCopy {
        let _ = writeln!(
            s,
            "footer:          tail footer damaged ({}); used the copy at offset 0",
            r.tail_footer_problem.unwrap_or("?")
        );
    }
    let _ = writeln!(s, "unique id:       {}", f.unique_id);
    let _ = writeln!(
        s,
        "saved state:     {}",
        if f.saved_state { "yes" } else { "no" }
    );
    if let Some(d) = &r.dynamic {
        let _ = writeln!(s, "header checksum: ok ({:#010x})", d.header.checksum);
        let _ = writeln!(
            s,
            "block size:      {} ({} bytes)",
            human_bytes(u64::from(d.header.block_size)),
            d.header.block_size
        );
        let _ = writeln!(
            s,
            "BAT:             {} entries at offset {}, {} used, {} blocks allocated",
            d.header.max_table_entries,
            d.header.table_offset,
            d.bat.entries_used,
            d.bat.allocated_blocks
        );
    }
    let _ = writeln!(
        s,
        "allocated:       {} ({} bytes) in {} data extents, {:.1}% of the disk",
        human_bytes(r.allocated_bytes),
        r.allocated_bytes,
        r.data_extents,
        r.allocated_bytes as f64 * 100.0 / r.virtual_size.max(1) as f64
    );
    let _ = writeln!(s, "extents:");
    for e in r.extents.iter().take(TEXT_EXTENTS) {
        let what = match e.source_offset() {
            Some(o) => format!("data at file offset {o}"),
            None => "zero".to_string(),
        };
        let _ = writeln!(s, "  {:>16} +{:<14} {what}", e.virtual_start, e.length);
    }
    if r.extents.len() > TEXT_EXTENTS {
        let _ = writeln!(
            s,
            "  ... and {} more (use --json for all)",
            r.extents.len() - TEXT_EXTENTS
        );
    }
    s
}
