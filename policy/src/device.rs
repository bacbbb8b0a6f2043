//! Which device to run on: the `[model] device` setting, resolved against what libtorch sees.

use tch::Device;

/// Which device to run on, as written in config (`[model] device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `n`.
    Cuda(usize),
}

/// A device setting that is malformed, or asks for a device that is not there.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The setting is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("{0}")]
    Invalid(String),
    /// CUDA was asked for but libtorch sees fewer devices.
    #[error("cuda:{index} was requested but libtorch sees {available} CUDA device(s)")]
    CudaUnavailable {
        /// The requested device index.
        index: usize,
        /// How many CUDA devices libtorch sees.
        available: usize,
    },
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    /// Parses `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("expected `auto`, `cpu` or `cuda:N`, got {s:?}")),
        }
    }
}

impl DeviceChoice {
    /// Resolves the choice against the devices libtorch sees.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let available = tch::Cuda::device_count().max(0) as usize;
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if available > 0 => Ok(Device::Cuda(0)),
            DeviceChoice::Auto => Ok(Device::Cpu),
            DeviceChoice::Cuda(index) if index < available => Ok(Device::Cuda(index)),
            DeviceChoice::Cuda(index) => Err(DeviceError::CudaUnavailable { index, available }),
        }
    }
}

/// Parses a `[model] device` setting and resolves it against the devices libtorch sees.
pub fn device_from_setting(setting: &str) -> Result<Device, DeviceError> {
    setting.parse::<DeviceChoice>().map_err(DeviceError::Invalid)?.resolve()
}

/// The name status messages and logs use for a device: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        Device::Mps => "mps".to_owned(),
        Device::Vulkan => "vulkan".to_owned(),
        Device::Cpu => "cpu".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor, nn, nn::Module, nn::OptimizerConfig};

    use super::*;

    /// A real forward and backward pass through libtorch: a linear layer y = x W^T + b with a
    /// squared loss, whose gradients have a closed form we check by hand.
    #[test]
    fn linear_forward_backward_matches_closed_form() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut layer = nn::linear(vs.root() / "layer", 3, 2, Default::default());
        tch::no_grad(|| {
            layer.ws.copy_(&Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0]).view([2, 3]));
            layer.bs.as_mut().expect("bias").copy_(&Tensor::from_slice(&[0.5f32, -0.5]));
        });
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).view([1, 3]);
        let target = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);

        let y = layer.forward(&x);
        // y = [1 - 4 + 1.5 + 0.5, -1 - 1 + 0 - 0.5] = [-1.0, -2.5]
        assert_eq!(Vec::<f32>::try_from(y.view([-1])).expect("f32"), vec![-1.0, -2.5]);

        // loss = sum (y - t)^2 = 4 + 12.25; dL/dy = 2 (y - t) = [-4, -7]
        let loss = (&y - &target).square().sum(Kind::Float);
        assert_eq!(loss.double_value(&[]), 16.25);
        loss.backward();

        // dL/dW = (dL/dy)^T x; dL/db = dL/dy
        let grad_w = Vec::<f32>::try_from(layer.ws.grad().view([-1])).expect("f32");
        assert_eq!(grad_w, vec![-4.0, 8.0, -2.0, -7.0, 14.0, -3.5]);
        let grad_b = Vec::<f32>::try_from(layer.bs.as_ref().expect("bias").grad()).expect("f32");
        assert_eq!(grad_b, vec![-4.0, -7.0]);

        // One SGD step with lr 0.1 moves W by -0.1 * grad.
        let mut opt = nn::Sgd::default().build(&vs, 0.1).expect("optimizer");
        opt.step();
        let w = Vec::<f32>::try_from(layer.ws.view([-1])).expect("f32");
        let expected = [1.4f32, 1.2, 3.2, -0.3, -0.9, 0.35];
        for (got, want) in w.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{w:?} vs {expected:?}");
        }
    }

    #[test]
    fn device_choices_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn settings_parse_and_resolve() {
        assert_eq!(device_from_setting("cpu").expect("cpu"), Device::Cpu);
        assert!(matches!(device_from_setting("gpu"), Err(DeviceError::Invalid(_))));
    }

    #[test]
    fn cpu_choice_resolves_to_cpu_and_missing_cuda_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve().expect("cpu"), Device::Cpu);
        let count = tch::Cuda::device_count() as usize;
        let err = DeviceChoice::Cuda(count).resolve().expect_err("index past the last device");
        assert!(err.to_string().contains(&format!("cuda:{count}")), "{err}");
    }
}
