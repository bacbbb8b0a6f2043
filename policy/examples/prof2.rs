use policy::*;
use std::time::Instant;
use tch::{Device, Kind};
fn main() {
    tch::set_num_threads(1);
    let model = Qwen2::zeros(ModelConfig::named("tiny").unwrap(), Kind::Float, Device::Cpu);
    model.init_random(0);
    let _g = tch::no_grad_guard();
    let p: Vec<i64> = (0..32).collect();
    for round in 0..6 {
        let mut cache = model.new_cache(1, 2048);
        let _ = model.forward_chunk(&mut cache, &[&p]);
        let n = 1000;
        let t = Instant::now();
        for i in 0..n {
            let tok = [i as i64 % 100];
            let _ = model.forward_chunk(&mut cache, &[&tok]);
        }
        println!(
            "round {round} forward_chunk {:.1} us",
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        );
    }
}
