//! `convert INPUT OUTPUT`: a local VHD or VHDX into a sparse raw or qcow2 image, written under a
//! temporary name and renamed only when complete and synced.

use std::ops::ControlFlow;

use crate::cli::{ConvertArgs, GlobalArgs};
use crate::error::Error;
use crate::image::copy::copy_extents;
use crate::image::sink::create_sink;
use crate::image::source::{DiskImage, open_image};
use crate::image::staging::{Overwrite, StagedOutput, check_output_free};
use crate::interrupt::Interrupt;
use crate::output::progress::Progress;
use crate::output::units::human_bytes;

/// Below this many data bytes a conversion is too quick for a progress display.
const PROGRESS_MIN_BYTES: u64 = 256 << 20;

pub fn run(args: &ConvertArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let format = super::output_format(&args.image, &args.output)?;
    let overwrite = if args.image.force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    check_output_free(&args.output, overwrite)?;
    if same_file(&args.input, &args.output) {
        return Err(Error::usage(format!(
            "{} is both input and output",
            args.input.display()
        )));
    }

    let input = &args.input;
    let src = super::open_vhd_file(input)?;
    let img = open_image(&src).map_err(|e| Error::from(e).context(input.display()))?;
    if let DiskImage::Vhd(vhd) = &img
        && let Some(problem) = &vhd.tail_footer_problem
    {
        tracing::warn!(
            "{}: damaged tail footer ({problem}); using the copy at offset 0",
            input.display()
        );
    }

    let staged = StagedOutput::create(&args.output, overwrite)?;
    let mut sink = create_sink(format, staged.file()?, img.virtual_size())
        .map_err(|e| Error::from(e).context(args.output.display()))?;
    let data = img.extents().data_bytes();
    let mut progress = Progress::new(
        format!("converting {}", input.display()),
        img.virtual_size(),
        global.progress_enabled() && data >= PROGRESS_MIN_BYTES,
    );
    let result = copy_extents(
        &img.reader(&src),
        img.extents(),
        sink.as_mut(),
        &mut |done| {
            progress.set(done);
            if interrupt.is_set() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    );
    progress.finish();
    // Returning drops `staged`, which removes the temporary file: nothing is renamed.
    if interrupt.is_set() {
        return Err(Error::interrupted());
    }
    let stats = result.map_err(|e| {
        Error::from(e).context(format!("{} → {}", input.display(), args.output.display()))
    })?;
    let out = staged.commit(overwrite)?;
    tracing::info!(
        "wrote {} from a {} ({format:?}, virtual size {}, {} of data read, {} written)",
        out.display(),
        img.format_name(),
        human_bytes(img.virtual_size()),
        human_bytes(stats.bytes_read),
        human_bytes(stats.sink.bytes_written)
    );
    Ok(())
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
