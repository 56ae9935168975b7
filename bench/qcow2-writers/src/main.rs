//! Benchmark: write a sparse raw disk into qcow2 with (a) azure2kvm's Qcow2Writer, (b) imago.
//! usage: imago-bench <ours|imago> <input.raw> <output.qcow2> [--chunk BYTES] [--shuffle SEED]
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use rustix::fs::{seek, SeekFrom};

/// Data chunks of `input`: SEEK_DATA/SEEK_HOLE extents, cut at multiples of `chunk`,
/// all-zero pieces dropped (checked by reading them).
fn chunks(input: &File, size: u64, chunk: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(input, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        let hole = seek(input, SeekFrom::Hole(data)).expect("SEEK_HOLE").min(size);
        // chunk grid aligned to absolute offsets (multiples of `chunk`)
        let mut off = data;
        while off < hole {
            let end = ((off / chunk + 1) * chunk).min(hole);
            let len = (end - off) as usize;
            input.read_exact_at(&mut buf[..len], off).unwrap();
            if buf[..len].iter().any(|&b| b != 0) {
                out.push((off, len));
            }
            off = end;
        }
        pos = hole;
    }
    out
}

fn shuffle(v: &mut [(u64, usize)], mut seed: u64) {
    // xorshift64*, Fisher-Yates
    seed |= 1;
    for i in (1..v.len()).rev() {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let r = seed.wrapping_mul(0x2545F4914F6CDD1D);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writer = args[1].as_str();
    let input = File::open(&args[2]).unwrap();
    let output_path = &args[3];
    let mut chunk = 1u64 << 20;
    let mut seed = None;
    let mut i = 4;
    while i < args.len() {
        match args[i].as_str() {
            "--chunk" => chunk = args[i + 1].parse().unwrap(),
            "--shuffle" => seed = Some(args[i + 1].parse::<u64>().unwrap()),
            a => panic!("unknown arg {a}"),
        }
        i += 2;
    }
    let size = input.metadata().unwrap().len();
    let mut list = chunks(&input, size, chunk);
    if let Some(s) = seed {
        shuffle(&mut list, s);
    }
    let data_bytes: u64 = list.iter().map(|c| c.1 as u64).sum();

    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!matches!(writer, "imago-open" | "imago-continue" | "ours-continue"))
        .open(output_path)
        .unwrap();
    let mut buf = vec![0u8; chunk as usize];
    let t = Instant::now();
    match writer {
        "ours" => {
            use azure2kvm::image::sink::{create_sink, ImageFormat};
            let mut sink = create_sink(ImageFormat::Qcow2, out, size).unwrap();
            for &(off, len) in &list {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                sink.write_at(off, &buf[..len]).unwrap();
            }
            let stats = sink.finish().unwrap(); // finish() fsyncs
            eprintln!("ours: {stats:?}");
        }
        "imago" => {
            use imago::qcow2::Qcow2;
            use imago::{DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder};
            let storage = imago::file::File::try_from(out).unwrap();
            let q = Qcow2::<imago::file::File>::create_builder(storage)
                .size(size)
                .cluster_size(65536)
                .create_open(DenyImplicitOpenGate::default(), |img| {
                    Ok(Qcow2::builder(img).backing(None).write(true))
                })
                .unwrap();
            let img = FormatAccess::new(q);
            for &(off, len) in &list {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                img.write(&buf[..len], off).unwrap();
            }
            img.flush().unwrap();
            img.sync().unwrap(); // fsync
        }
        "imago-resume" => {
            // first half of the chunks, flush+sync, drop; reopen the file for writing; second half
            use imago::qcow2::Qcow2;
            use imago::{DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder};
            let half = list.len() / 2;
            {
                let storage = imago::file::File::try_from(out).unwrap();
                let q = Qcow2::<imago::file::File>::create_builder(storage)
                    .size(size)
                    .cluster_size(65536)
                    .create_open(DenyImplicitOpenGate::default(), |img| {
                        Ok(Qcow2::builder(img).backing(None).write(true))
                    })
                    .unwrap();
                let img = FormatAccess::new(q);
                for &(off, len) in &list[..half] {
                    input.read_exact_at(&mut buf[..len], off).unwrap();
                    img.write(&buf[..len], off).unwrap();
                }
                img.flush().unwrap();
                img.sync().unwrap();
            }
            let file = OpenOptions::new().read(true).write(true).open(output_path).unwrap();
            let storage = imago::file::File::try_from(file).unwrap();
            let q = Qcow2::<imago::file::File>::builder(storage)
                .backing(None)
                .write(true)
                .open(DenyImplicitOpenGate::default())
                .unwrap();
            let img = FormatAccess::new(q);
            for &(off, len) in &list[half..] {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                img.write(&buf[..len], off).unwrap();
            }
            img.flush().unwrap();
            img.sync().unwrap();
        }
        "imago-open" => {
            // can imago open (read-only) whatever file is at output_path? (e.g. our checkpoint)
            use imago::qcow2::Qcow2;
            use imago::{DenyImplicitOpenGate, FormatDriverBuilder};
            drop(out);
            let file = File::open(output_path).unwrap();
            let storage = imago::file::File::try_from(file).unwrap();
            match Qcow2::<imago::file::File>::builder(storage).backing(None).open(DenyImplicitOpenGate::default()) {
                Ok(_) => eprintln!("imago opened it"),
                Err(e) => eprintln!("imago refused: {e}"),
            }
            return;
        }
        "ours-checkpoint" => {
            // half the chunks, checkpoint(), then exit without finish() (a crash after a checkpoint)
            use azure2kvm::image::sink::{create_sink, ImageFormat};
            let mut sink = create_sink(ImageFormat::Qcow2, out, size).unwrap();
            for &(off, len) in &list[..list.len() / 2] {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                sink.write_at(off, &buf[..len]).unwrap();
            }
            sink.checkpoint().unwrap();
            std::process::exit(0);
        }
        "imago-crash" | "imago-continue" => {
            // crash: create, chunks [0, n/3), flush+sync (checkpoint), chunks [n/3, 2n/3), exit
            // without flushing (process crash: page cache survives, imago's dirty caches don't).
            // continue: reopen, rewrite chunks [n/3, n) (everything after the checkpoint), flush+sync.
            use imago::qcow2::Qcow2;
            use imago::{DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder};
            let (a, b) = (list.len() / 3, list.len() * 2 / 3);
            let storage = imago::file::File::try_from(out).unwrap();
            if writer == "imago-crash" {
                let q = Qcow2::<imago::file::File>::create_builder(storage)
                    .size(size)
                    .cluster_size(65536)
                    .create_open(DenyImplicitOpenGate::default(), |img| {
                        Ok(Qcow2::builder(img).backing(None).write(true))
                    })
                    .unwrap();
                let img = FormatAccess::new(q);
                for (i, &(off, len)) in list[..b].iter().enumerate() {
                    if i == a {
                        img.flush().unwrap();
                        img.sync().unwrap();
                    }
                    input.read_exact_at(&mut buf[..len], off).unwrap();
                    img.write(&buf[..len], off).unwrap();
                }
                std::process::exit(0);
            }
            let q = Qcow2::<imago::file::File>::builder(storage)
                .backing(None)
                .write(true)
                .open(DenyImplicitOpenGate::default())
                .unwrap();
            let img = FormatAccess::new(q);
            for &(off, len) in &list[a..] {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                img.write(&buf[..len], off).unwrap();
            }
            img.flush().unwrap();
            img.sync().unwrap();
        }
        "ours-crash" | "ours-continue" => {
            use azure2kvm::image::sink::{create_sink, resume_sink, ImageFormat};
            let (a, b) = (list.len() / 3, list.len() * 2 / 3);
            if writer == "ours-crash" {
                let mut sink = create_sink(ImageFormat::Qcow2, out, size).unwrap();
                for (i, &(off, len)) in list[..b].iter().enumerate() {
                    if i == a {
                        sink.checkpoint().unwrap();
                    }
                    input.read_exact_at(&mut buf[..len], off).unwrap();
                    sink.write_at(off, &buf[..len]).unwrap();
                }
                std::process::exit(0);
            }
            let mut sink = resume_sink(ImageFormat::Qcow2, out, size).unwrap();
            for &(off, len) in &list[a..] {
                input.read_exact_at(&mut buf[..len], off).unwrap();
                sink.write_at(off, &buf[..len]).unwrap();
            }
            sink.finish().unwrap();
        }
        w => panic!("unknown writer {w}"),
    }
    eprintln!(
        "{writer}: {} chunks, {} data bytes, virtual {size}, {:.3}s in-process",
        list.len(),
        data_bytes,
        t.elapsed().as_secs_f64()
    );
}
