//! `inspect FILE [--json]`: what a VHD or VHDX is (the format found by content), without
//! converting it.

use std::io::Write;

use serde::Serialize;

use crate::cli::InspectArgs;
use crate::error::Error;
use crate::image::extent::Extent;
use crate::image::source::{DiskImage, open_image};
use crate::image::vhd::{BatSummary, DynamicHeader, Footer, FooterSource, VhdImage};
use crate::image::vhdx::{self, Header, Metadata, Regions, VhdxImage, VhdxType};
use crate::output::units::human_bytes;

/// Extents listed in text output before "... and N more".
const TEXT_EXTENTS: usize = 20;

#[derive(Debug, Serialize)]
struct Report<'a> {
    file: String,
    /// "vhd": which format the content showed.
    format: &'static str,
    file_size: u64,
    virtual_size: u64,
    footer: &'a Footer,
    footer_source: FooterSource,
    tail_footer_problem: Option<&'a str>,
    /// Bytes the CHS geometry addresses; less than virtual_size on Azure's footers.
    geometry_bytes: u64,
    dynamic: Option<DynamicReport<'a>>,
    /// Always 512 for a VHD.
    logical_sector_size: u32,
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
    let img = open_image(&src).map_err(|e| Error::from(e).context(path.display()))?;
    let file = path.display().to_string();
    match &img {
        DiskImage::Vhd(img) => {
            let r = report(img, file);
            print(args.json, &r, || text(&r))
        }
        DiskImage::Vhdx(img) => {
            let r = vhdx_report(img, file);
            print(args.json, &r, || vhdx_text(&r))
        }
    }
}

fn print<T: Serialize>(json: bool, report: &T, text: impl FnOnce() -> String) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, report)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        out.write_all(text().as_bytes())
    };
    written.map_err(|e| Error::failed(format!("writing to stdout: {e}")))
}

fn report(img: &VhdImage, file: String) -> Report<'_> {
    Report {
        file,
        format: "vhd",
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
        logical_sector_size: 512,
        allocated_bytes: img.extents.data_bytes(),
        data_extents: img.extents.data_extent_count(),
        extents: img.extents.extents(),
    }
}

/// The lines every format's text report starts with.
fn head_lines(
    file: &str,
    file_size: u64,
    format: &str,
    disk_type: &dyn std::fmt::Debug,
    virtual_size: u64,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "file:            {file} ({file_size} bytes)");
    let _ = writeln!(s, "format:          {format}");
    let _ = writeln!(s, "type:            {disk_type:?}");
    let _ = writeln!(
        s,
        "virtual size:    {} ({virtual_size} bytes)",
        human_bytes(virtual_size)
    );
    s
}

fn text(r: &Report<'_>) -> String {
    use std::fmt::Write as _;
    let f = r.footer;
    let mut s = head_lines(&r.file, r.file_size, "VHD", &f.disk_type, r.virtual_size);
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
    extents_text(
        &mut s,
        r.allocated_bytes,
        r.virtual_size,
        r.data_extents,
        r.extents,
    );
    s
}

/// The allocation line and the first extents, shared by both formats.
fn extents_text(
    s: &mut String,
    allocated_bytes: u64,
    virtual_size: u64,
    data_extents: usize,
    extents: &[Extent],
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "allocated:       {} ({} bytes) in {} data extents, {:.1}% of the disk",
        human_bytes(allocated_bytes),
        allocated_bytes,
        data_extents,
        allocated_bytes as f64 * 100.0 / virtual_size.max(1) as f64
    );
    let _ = writeln!(s, "extents:");
    for e in extents.iter().take(TEXT_EXTENTS) {
        let what = match e.source_offset() {
            Some(o) => format!("data at file offset {o}"),
            None => "zero".to_string(),
        };
        let _ = writeln!(s, "  {:>16} +{:<14} {what}", e.virtual_start, e.length);
    }
    if extents.len() > TEXT_EXTENTS {
        let _ = writeln!(
            s,
            "  ... and {} more (use --json for all)",
            extents.len() - TEXT_EXTENTS
        );
    }
}

#[derive(Debug, Serialize)]
struct VhdxReport<'a> {
    file: String,
    /// "vhdx": which format the content showed.
    format: &'static str,
    file_size: u64,
    virtual_size: u64,
    #[serde(rename = "type")]
    disk_type: VhdxType,
    creator: &'a str,
    /// 1 or 2: the valid header with the higher sequence number.
    current_header: u8,
    header: &'a Header,
    /// "empty", or "replayed" when the log held updates, which every value here includes
    /// (the file itself is never written).
    log_state: &'static str,
    log_replay: Option<&'a vhdx::log::ReplaySummary>,
    regions: &'a Regions,
    metadata: &'a Metadata,
    logical_sector_size: u32,
    physical_sector_size: u32,
    /// Payload blocks per sector bitmap entry in the BAT.
    chunk_ratio: u64,
    bat: &'a vhdx::BatSummary,
    allocated_bytes: u64,
    data_extents: usize,
    extents: &'a [Extent],
}

fn vhdx_report(img: &VhdxImage, file: String) -> VhdxReport<'_> {
    VhdxReport {
        file,
        format: "vhdx",
        file_size: img.file_len,
        virtual_size: img.virtual_size(),
        disk_type: img.disk_type(),
        creator: &img.section.creator,
        current_header: img.section.header_index,
        header: &img.section.header,
        log_state: if img.log.is_some() {
            "replayed"
        } else {
            "empty"
        },
        log_replay: img.log.as_ref().map(|l| &l.summary),
        regions: &img.section.regions,
        metadata: &img.metadata,
        logical_sector_size: img.metadata.logical_sector_size,
        physical_sector_size: img.metadata.physical_sector_size,
        chunk_ratio: img.metadata.chunk_ratio(),
        bat: &img.bat,
        allocated_bytes: img.extents.data_bytes(),
        data_extents: img.extents.data_extent_count(),
        extents: img.extents.extents(),
    }
}

fn vhdx_text(r: &VhdxReport<'_>) -> String {
    use std::fmt::Write as _;
    let (h, m, b) = (r.header, r.metadata, r.bat);
    let mut s = head_lines(&r.file, r.file_size, "VHDX", &r.disk_type, r.virtual_size);
    let _ = writeln!(s, "creator:         {:?}", r.creator);
    let _ = writeln!(
        s,
        "header:          {} of 2 current (sequence {}, CRC-32C ok {:#010x})",
        r.current_header, h.sequence_number, h.checksum
    );
    let _ = writeln!(
        s,
        "log:             {} ({} bytes at offset {})",
        r.log_state, h.log_length, h.log_offset
    );
    if let Some(l) = r.log_replay {
        let _ = writeln!(
            s,
            "                 {} entries, sequence {}-{}: {} data and {} zero writes applied in memory",
            l.entries, l.first_sequence, l.last_sequence, l.data_writes, l.zero_writes
        );
    }
    let _ = writeln!(
        s,
        "block size:      {} ({} bytes)",
        human_bytes(u64::from(m.block_size)),
        m.block_size
    );
    let _ = writeln!(
        s,
        "sector size:     {} logical, {} physical",
        r.logical_sector_size, r.physical_sector_size
    );
    if let Some(id) = &m.page_83_data {
        let _ = writeln!(s, "page 83 data:    {id}");
    }
    let _ = writeln!(
        s,
        "BAT:             {} entries at offset {} (chunk ratio {}): {} fully present, {} zero, {} unmapped, {} not present, {} undefined",
        b.entries,
        r.regions.bat.offset,
        r.chunk_ratio,
        b.fully_present,
        b.zero,
        b.unmapped,
        b.not_present,
        b.undefined
    );
    extents_text(
        &mut s,
        r.allocated_bytes,
        r.virtual_size,
        r.data_extents,
        r.extents,
    );
    s
}
