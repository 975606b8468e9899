use candle_core::{D, Device, Tensor, Var};
#[test]
fn prof() {
    let x = Tensor::randn(0f32, 1., (12, 64, 512), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..32 {
            let _ = x.sum_keepdim(0).unwrap().sum_keepdim(1).unwrap();
        }
        eprintln!("32x sum over leading dims {:?}", t.elapsed());
        let t = std::time::Instant::now();
        for _ in 0..32 {
            let _ = x.sum_keepdim(D::Minus1).unwrap();
        }
        eprintln!("32x sum over last dim {:?}", t.elapsed());
        let b =
            Var::from_tensor(&Tensor::zeros(512, candle_core::DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        let t = std::time::Instant::now();
        for _ in 0..32 {
            let y = x.broadcast_add(b.as_tensor()).unwrap().sum_all().unwrap();
            let _ = y.backward().unwrap();
        }
        eprintln!("32x bias add fwd+bwd {:?}", t.elapsed());
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 1., (512, 128), &Device::Cpu).unwrap()).unwrap();
        let x2 = Tensor::randn(0f32, 1., (12, 64, 128), &Device::Cpu).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..32 {
            let y = x2
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let _ = y.backward().unwrap();
        }
        eprintln!("32x linear fwd+bwd {:?}", t.elapsed());
    }
}
