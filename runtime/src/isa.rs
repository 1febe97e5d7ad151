//! Which instruction set the kernels use: chosen once, carried as a value.
//!
//! An [`Isa`] other than `Scalar` only comes out of [`Isa::detect`] or
//! [`Isa::checked`], which all confirm that the CPU has the features; the plan keeps it and the
//! kernels rely on it.

/// An instruction set the runtime has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; always available.
    Scalar,
    /// x86_64 AVX2 with FMA and F16C.
    Avx2,
    /// x86_64 AVX-512 (F and DQ), with AVX2, FMA and F16C.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// Every instruction set, fastest last.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Its name on the command line: `scalar`, `avx2`, `avx512`, `neon`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// The instruction set named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether the CPU running this code has it (at run time with `std`, else as compiled).
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            Isa::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
                    && Isa::Avx2.available()
            }
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            Isa::Avx2 => cfg!(all(
                target_feature = "avx2",
                target_feature = "fma",
                target_feature = "f16c"
            )),
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            Isa::Avx512 => cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512dq",
                target_feature = "avx2",
                target_feature = "fma"
            )),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => cfg!(target_feature = "neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// `Some(self)` when available.
    pub fn checked(self) -> Option<Isa> {
        self.available().then_some(self)
    }

    /// The fastest instruction set this CPU has (detected at run time with `std`; without it, the
    /// features the crate was compiled for).
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }

    /// Every instruction set available here.
    pub fn available_all() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|i| i.available())
    }
}

impl core::fmt::Display for Isa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
