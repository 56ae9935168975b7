use super::*;

const GIB: u64 = 1 << 30;
/// The engine's cap at 8 MiB chunks.
const PER_8M: usize = (CHUNK_MEMORY_BUDGET / (8 * MIB)) as usize;

fn total(n: usize, disks: usize, buffers: usize) -> usize {
    let b = split(n, disks, buffers, PER_8M);
    b.slots * b.connections
}

#[test]
fn the_split_bounds_connections_and_memory() {
    for n in 1..=256 {
        for disks in 0..40 {
            for buffers in [3, 7, 24, 60, 200] {
                let b = split(n, disks, buffers, PER_8M);
                assert!(b.slots * b.connections <= n, "{n}/{disks}: {b:?}");
                assert!(b.slots >= 1 && b.connections >= 1 && b.slots <= disks.max(1));
                let held = b.slots * (b.connections + b.queue_depth + 1);
                assert!(held <= buffers, "{n}/{disks}/{buffers}: {b:?}");
                assert!(b.connections + b.queue_depth < PER_8M, "{b:?}");
            }
        }
    }
    let b = |n, d| {
        let x = split(n, d, 24, PER_8M);
        (x.slots, x.connections)
    };
    // The old fixed budget (24 buffers of 8 MiB) gives what it gave.
    assert_eq!(b(16, 10), (4, 4));
    assert_eq!(b(16, 2), (2, 8));
    assert_eq!(b(16, 1), (1, 16));
    assert_eq!(b(2, 5), (1, 2));
    assert_eq!(b(64, 10), (2, 10));
}

proptest::proptest! {
    /// More connections asked, more buffers or more disks never give fewer connections
    /// in total; the buffers always hold.
    #[test]
    fn the_split_total_is_monotonic_in_concurrency_buffers_and_disks(
        n in 1usize..=256,
        disks in 0usize..=64,
        buffers in 3usize..=256,
    ) {
        let t = total(n, disks, buffers);
        proptest::prop_assert!(total(n + 1, disks, buffers) >= t, "--concurrency {}", n + 1);
        proptest::prop_assert!(total(n, disks, buffers + 1) >= t, "buffers {}", buffers + 1);
        proptest::prop_assert!(total(n, disks + 1, buffers) >= t, "disks {}", disks + 1);
    }

    /// The whole plan: within --memory (chunk buffers plus the overhead), within
    /// --concurrency, and its total grows with both.
    #[test]
    fn the_plan_stays_within_memory_and_grows_with_it_and_with_concurrency(
        n in 1usize..=256,
        disks in 1usize..=64,
        mib in (MIN_MEMORY / MIB)..=4096,
    ) {
        let memory = mib * MIB;
        let b = plan(Some(n), disks, memory);
        proptest::prop_assert!(b.chunk_memory() + OVERHEAD <= memory, "{b:?}");
        proptest::prop_assert!(b.total_connections() <= n, "{b:?}");
        proptest::prop_assert!(b.live_grants >= b.slots.min(disks) && b.live_grants <= disks);
        proptest::prop_assert!(b.live_grants <= b.slots + MAX_GRANTS_AHEAD);
        let t = b.total_connections();
        proptest::prop_assert!(plan(Some(n + 1), disks, memory).total_connections() >= t);
        proptest::prop_assert!(plan(Some(n), disks, memory + 4 * MIB).total_connections() >= t);
        proptest::prop_assert!(plan(Some(n), disks, memory + 64 * MIB).total_connections() >= t);
    }
}

#[test]
fn ten_disks_with_64_connections_get_them_when_memory_allows() {
    // The issue: the fixed 192 MiB gave 10 disks and --concurrency 64 8 connections.
    let b = plan(Some(64), 10, GIB);
    assert_eq!(
        (b.total_connections(), b.chunk_size),
        (64, 8 * MIB),
        "{b:?}"
    );
    assert!(b.slots >= 8, "{b:?}");
    // A small budget: smaller chunks, so more disks still move at once.
    let small = plan(Some(64), 10, 160 * MIB);
    assert_eq!(small.chunk_size, 4 * MIB, "{small:?}");
    assert!(
        small.total_connections() > plan_at_8m(64, 10, 160 * MIB),
        "{small:?}"
    );
}

fn plan_at_8m(n: usize, disks: usize, memory: u64) -> usize {
    let b = (memory - OVERHEAD) / (8 * MIB);
    total(n, disks, b as usize)
}

#[test]
fn defaults_scale_with_the_disks_and_keep_a_lone_disk_as_it_was() {
    assert_eq!(default_concurrency(1), DEFAULT_CONCURRENCY);
    assert_eq!(default_concurrency(4), 16);
    assert_eq!(default_concurrency(16), 64);
    assert_eq!(default_concurrency(1000), MAX_CONNECTIONS);
    let one = plan(None, 1, GIB);
    assert_eq!((one.slots, one.connections, one.queue_depth), (1, 16, 4));
    let sixteen = plan(None, 16, GIB);
    assert_eq!((sixteen.slots, sixteen.connections), (16, 4), "{sixteen:?}");
    assert_eq!(sixteen.live_grants, 16);
    let many = plan(None, 100, GIB);
    assert_eq!(
        many.live_grants,
        many.slots + many.slots.min(MAX_GRANTS_AHEAD)
    );
    assert!(
        many.live_grants <= 100 && many.live_grants > many.slots,
        "{many:?}"
    );
}

#[test]
fn the_default_memory_is_a_quarter_of_ram_capped() {
    assert_eq!(default_memory(24 * GIB), DEFAULT_MEMORY_CAP);
    assert_eq!(default_memory(2 * GIB), GIB / 2);
    assert_eq!(default_memory(64 * MIB), MIN_MEMORY);
    for ram in [256 * MIB, GIB, 3 * GIB, 4 * GIB, 100 * GIB] {
        assert!(default_memory(ram) <= ram / 4, "{ram}");
        assert!(check_memory(default_memory(ram), ram).is_ok());
    }
}

#[test]
fn memory_outside_its_bounds_is_refused_naming_the_flag() {
    let ram = 8 * GIB;
    assert_eq!(check_memory(MIN_MEMORY, ram), Ok(MIN_MEMORY));
    assert_eq!(check_memory(ram, ram), Ok(ram));
    for bad in [0, 1, MIN_MEMORY - 1, ram + 1] {
        let e = check_memory(bad, ram).unwrap_err();
        assert!(e.starts_with("--memory "), "{e}");
    }
}
