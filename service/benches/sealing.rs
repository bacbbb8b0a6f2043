//! What sealing costs per byte on this machine, pass by pass (issue #11): the passes a sealed
//! weights transfer makes (`paretopo_service::sealed`) beside the copies a plaintext transfer
//! makes, each over the same bytes through a buffer of one frame (1 MiB), without sockets.
//!
//! A plaintext transfer moves each byte once on each end (the kernel copies the weights into
//! the socket, and out of it into the actor's tensor). A sealed one moves it twice: the learner
//! seals from the weights into a frame buffer and the kernel copies the frame; the kernel
//! copies into the actor's frame buffer and the actor opens it into the tensor. So even a
//! cipher that cost nothing would add one copy in cache on each end; "copy frame -> frame"
//! measures that copy and "seal a frame in place" the cipher's arithmetic alone.
//!
//! Run with `./dev bench sealing` or `cargo bench -p paretopo-service --bench sealing --
//! [--gib N] [--rounds N]`. Each pass runs on 1 thread, then on 2 threads at once (each with
//! its own buffers), best of `--rounds`; times are seconds per `--gib` GiB per thread.

use std::hint::black_box;
use std::time::Instant;

use aegis::aegis128x4::Aegis128X4;

const FRAME: usize = 1 << 20;
const KEY: [u8; 16] = [7; 16];
const NONCE: [u8; 16] = [1; 16];

#[derive(Clone, Copy)]
enum Pass {
    CopyMemoryToFrame,
    SealMemoryToFrame,
    CopyFrameToFrame,
    SealFrameInPlace,
    CopyFrameToMemory,
    OpenFrameToMemory,
}

impl Pass {
    const ALL: [Pass; 6] = [
        Pass::CopyMemoryToFrame,
        Pass::SealMemoryToFrame,
        Pass::CopyFrameToFrame,
        Pass::SealFrameInPlace,
        Pass::CopyFrameToMemory,
        Pass::OpenFrameToMemory,
    ];

    fn name(self) -> &'static str {
        match self {
            Pass::CopyMemoryToFrame => "copy memory -> frame (plaintext, learner)",
            Pass::SealMemoryToFrame => "seal memory -> frame (sealed, learner)",
            Pass::CopyFrameToFrame => "copy frame -> frame (in cache)",
            Pass::SealFrameInPlace => "seal a frame in place (in cache)",
            Pass::CopyFrameToMemory => "copy frame -> memory (plaintext, actor)",
            Pass::OpenFrameToMemory => "open frame -> memory (sealed, actor)",
        }
    }
}

/// One thread's buffers: `memory` stands for the weights or the tensors (far larger than the
/// caches), `frame` and `other` for frame buffers that stay in cache.
struct Buffers {
    memory: Vec<u8>,
    frame: Vec<u8>,
    other: Vec<u8>,
}

fn cipher() -> Aegis128X4<16> {
    Aegis128X4::new(&KEY, &NONCE)
}

/// Seconds for one run of `pass` over all of `memory`.
fn run(pass: Pass, b: &mut Buffers) -> f64 {
    let frames = b.memory.len() / FRAME;
    // Opening needs a frame that was sealed, with its tag.
    let tag = cipher().encrypt_in_place(&mut b.other, b"");
    let start = Instant::now();
    match pass {
        Pass::CopyMemoryToFrame => {
            for chunk in b.memory.chunks_exact(FRAME) {
                b.frame.copy_from_slice(chunk);
                black_box(&b.frame);
            }
        }
        Pass::SealMemoryToFrame => {
            for chunk in b.memory.chunks_exact(FRAME) {
                let mut sealer = cipher().encryptor(b"");
                sealer.update(chunk, &mut b.frame);
                black_box(sealer.finalize());
            }
        }
        Pass::CopyFrameToFrame => {
            for _ in 0..frames {
                b.frame.copy_from_slice(&b.other);
                black_box(&b.frame);
            }
        }
        Pass::SealFrameInPlace => {
            for _ in 0..frames {
                black_box(cipher().encrypt_in_place(&mut b.frame, b""));
            }
        }
        Pass::CopyFrameToMemory => {
            for chunk in b.memory.chunks_exact_mut(FRAME) {
                chunk.copy_from_slice(&b.other);
            }
        }
        Pass::OpenFrameToMemory => {
            for chunk in b.memory.chunks_exact_mut(FRAME) {
                let mut opener = cipher().decryptor(b"", chunk);
                opener.update(&b.other).expect("the frame fits");
                opener.finalize(&tag).expect("the frame opens");
            }
        }
    }
    black_box(&b.memory);
    start.elapsed().as_secs_f64()
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let gib = flag("--gib", 2).max(1);
    let rounds = flag("--rounds", 3).max(1);
    let bytes = gib << 30;
    println!(
        "sealing passes, AEGIS-128X4, frames of {} KiB, {gib} GiB per thread, best of {rounds}",
        FRAME >> 10
    );
    for threads in [1, 2] {
        for pass in Pass::ALL {
            let workers: Vec<_> = (0..threads)
                .map(|i| {
                    std::thread::spawn(move || {
                        let mut b = Buffers {
                            memory: vec![i as u8 + 1; bytes],
                            frame: vec![3; FRAME],
                            other: vec![5; FRAME],
                        };
                        (0..rounds).map(|_| run(pass, &mut b)).fold(f64::INFINITY, f64::min)
                    })
                })
                .collect();
            let seconds: Vec<String> = workers
                .into_iter()
                .map(|w| format!("{:.3}", w.join().expect("a bench thread panicked")))
                .collect();
            println!("  {threads} thread(s): {:44} {} s", pass.name(), seconds.join(", "));
        }
    }
}
