//! A trained network as the plain dense model it computes: every linear and conv layer's
//! masked weights in f32 ([`MaskedLayer::masked_weight`]), batch norms with their running
//! statistics, and the graph. What `trainer export --format safetensors` and `--format onnx`
//! write; [`DenseModel::to_safetensors`] is the former.
//!
//! Names and layouts are PyTorch's: `{layer}.weight` as `[out, in]` or `[out, in, kh, kw]`
//! (the layers are bias-free), and a batch norm as `BatchNorm2d`'s state dict:
//! `{norm}.running_mean`, `{norm}.running_var`, and `{norm}.weight` and `{norm}.bias` when
//! affine. A non-affine norm (the masking methods keep them so) writes only its statistics,
//! as `BatchNorm2d(affine=False)` does; no norm writes `num_batches_tracked`, which the
//! trainer does not count (load into PyTorch with `strict=False`, or add it).
//!
//! [`MaskedLayer::masked_weight`]: crate::model::MaskedLayer::masked_weight

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::mask::Binarize;
use crate::model::{Net, Node};

/// A linear or conv layer's effective weights.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayer {
    /// The trainer's (and PyTorch's) name: `fc1`, `layer1.conv1`.
    pub name: String,
    /// `[out, in]` or `[out, in, kh, kw]`.
    pub dims: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A batch norm in inference form: `(x − mean) / √(var + eps) · γ + β` per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseNorm {
    /// Name: `bn1`, `layer1.bn2`.
    pub name: String,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running (unbiased) variance.
    pub var: Vec<f32>,
    /// γ and β, when affine.
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
    /// Added to the variance.
    pub eps: f64,
}

/// A network as plain dense tensors and its graph (the nodes of [`Net`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DenseModel {
    /// `[C, H, W]` of one input.
    pub input: [usize; 3],
    /// Per-channel `(mean, std)` applied to pixels in [0, 1] first.
    pub normalize: Vec<(f32, f32)>,
    /// The graph, as [`Net::nodes`].
    pub nodes: Vec<Node>,
    /// The node each node reads, as [`Net::inputs`].
    pub inputs: Vec<Option<usize>>,
    /// Linear and conv layers, indexed as the nodes index them.
    pub layers: Vec<DenseLayer>,
    /// Batch norms, indexed as the nodes index them.
    pub norms: Vec<DenseNorm>,
}

impl DenseModel {
    /// The weights `net` computes with under `rule` (on any device; copied to the host).
    pub fn from_net(net: &Net, rule: Binarize) -> Result<Self> {
        let vec = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let mut layers = Vec::with_capacity(net.layers.len());
        for l in &net.layers {
            layers.push(DenseLayer {
                name: l.name.clone(),
                dims: l.dims.clone(),
                values: vec(&l.masked_weight(rule)?)?,
            });
        }
        let mut norms = Vec::with_capacity(net.norms.len());
        for n in &net.norms {
            let affine = match &n.affine {
                Some((g, b)) => Some((vec(g.as_tensor())?, vec(b.as_tensor())?)),
                None => None,
            };
            norms.push(DenseNorm {
                name: n.name.clone(),
                mean: vec(&n.running_mean)?,
                var: vec(&n.running_var)?,
                affine,
                eps: n.eps,
            });
        }
        let model = Self {
            input: net.input,
            normalize: net.normalize.clone(),
            nodes: net.nodes.clone(),
            inputs: net.inputs.clone(),
            layers,
            norms,
        };
        model.classes()?;
        Ok(model)
    }

    /// Output units: the last node must be a linear layer (every model of the zoo ends so).
    pub fn classes(&self) -> Result<usize> {
        match self.nodes.last() {
            Some(&Node::Linear(l)) => self
                .layers
                .get(l)
                .map(|l| l.dims[0])
                .ok_or_else(|| Error::Config(format!("node refers to layer {l}, which does not exist"))),
            _ => Err(Error::Config("the model does not end with a linear layer".into())),
        }
    }

    /// Every tensor under its PyTorch name, with its dims: layer weights, then the norms'
    /// tensors (see the module documentation).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = Vec::with_capacity(self.layers.len() + 4 * self.norms.len());
        for l in &self.layers {
            out.push((format!("{}.weight", l.name), l.dims.clone(), l.values.as_slice()));
        }
        for n in &self.norms {
            let c = vec![n.mean.len()];
            out.push((format!("{}.running_mean", n.name), c.clone(), n.mean.as_slice()));
            out.push((format!("{}.running_var", n.name), c.clone(), n.var.as_slice()));
            if let Some((g, b)) = &n.affine {
                out.push((format!("{}.weight", n.name), c.clone(), g.as_slice()));
                out.push((format!("{}.bias", n.name), c, b.as_slice()));
            }
        }
        out
    }

    /// The safetensors bytes of [`DenseModel::tensors`] (F32, little-endian) with `metadata`
    /// as the header's `__metadata__`.
    pub fn to_safetensors(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        safetensors_bytes(&self.tensors(), metadata)
    }
}

/// A safetensors file of f32 tensors: an 8-byte little-endian header length, the JSON header
/// (keys sorted, padded with spaces to a multiple of 8 bytes so the data is aligned), then
/// each tensor's values in the header's order. Written here rather than with the `safetensors`
/// crate, whose metadata is a `HashMap`: its order, and so the bytes, would change from run to
/// run.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Vec<usize>, &[f32])> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for (name, dims, values) in &sorted {
        if name == "__metadata__" || header.contains_key(name) {
            return Err(Error::Config(format!("safetensors: tensor name '{name}' used twice")));
        }
        if dims.iter().product::<usize>() != values.len() {
            return Err(Error::Config(format!(
                "safetensors: '{name}' has {} values for dims {dims:?}",
                values.len()
            )));
        }
        let end = offset + 4 * values.len();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": dims, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, values) in &sorted {
        for v in values.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FitConfig, MethodKind};
    use crate::model::Net;
    use candle_core::{Device, Tensor};

    fn resnet(method: MethodKind) -> (FitConfig, Net) {
        let cfg = FitConfig {
            model: "resnet-8".into(),
            keep: 0.4,
            ..FitConfig::defaults(method)
        };
        let mut net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        // Statistics and (affine) parameters that are not the initial ones.
        for (i, n) in net.norms.iter_mut().enumerate() {
            let c = n.channels;
            let ramp = |a: f32, b: f32| -> Vec<f32> { (0..c).map(|k| a + b * (k + i) as f32).collect() };
            n.running_mean = Tensor::new(ramp(-0.2, 0.01), &Device::Cpu).unwrap();
            n.running_var = Tensor::new(ramp(0.5, 0.02), &Device::Cpu).unwrap();
            if let Some((g, b)) = &n.affine {
                g.set(&Tensor::new(ramp(0.8, 0.01), &Device::Cpu).unwrap()).unwrap();
                b.set(&Tensor::new(ramp(-0.1, 0.005), &Device::Cpu).unwrap()).unwrap();
            }
        }
        (cfg, net)
    }

    /// A dense network built from the safetensors file computes what the masked one did.
    #[test]
    fn safetensors_rebuild_the_masked_network() {
        for method in [MethodKind::EdgePopup, MethodKind::Dense] {
            let (cfg, mut net) = resnet(method);
            let rule = crate::train::rule_at(&cfg, 0, 0.0);
            let dense = DenseModel::from_net(&net, rule).unwrap();
            let meta = BTreeMap::from([("model".to_string(), "resnet-8".to_string())]);
            let bytes = dense.to_safetensors(&meta).unwrap();
            assert_eq!(bytes, dense.to_safetensors(&meta).unwrap(), "deterministic");
            let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(header_len % 8, 0);
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
            assert_eq!(header["__metadata__"]["model"], "resnet-8");

            let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
            let affine = method == MethodKind::Dense;
            assert_eq!(map.contains_key("bn1.weight"), affine, "{method:?}");
            assert!(map.contains_key("layer2.shortcut_bn.running_var"));
            assert_eq!(map["layer1.conv1.weight"].dims(), [16, 16, 3, 3]);
            assert_eq!(map["fc.weight"].dims(), [10, 64]);
            assert_eq!(
                map.len(),
                net.layers.len() + net.norms.len() * if affine { 4 } else { 2 }
            );

            let dense_cfg = FitConfig {
                model: "resnet-8".into(),
                ..FitConfig::defaults(MethodKind::Dense)
            };
            let mut rebuilt = Net::build(&dense_cfg, [1, 28, 28], 10, Some(&map), &Device::Cpu).unwrap();
            for (l, r) in net.layers.iter().zip(&rebuilt.layers) {
                let want: Vec<f32> = l.masked_weight(rule).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let got: Vec<f32> = r.weight_f32().unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(got, want, "{}", l.name);
            }
            let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu).unwrap();
            let a = net.forward(&x, rule, false).unwrap();
            let b = rebuilt
                .forward(&x, crate::train::rule_at(&dense_cfg, 0, 0.0), false)
                .unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{method:?}: {diff}");
        }
    }

    #[test]
    fn safetensors_refuse_inconsistent_tensors() {
        let v = [1.0f32, 2.0];
        let twice = [("a".to_string(), vec![2], &v[..]), ("a".to_string(), vec![2], &v[..])];
        let e = safetensors_bytes(&twice, &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("'a' used twice"), "{e}");
        let short = [("a".to_string(), vec![3], &v[..])];
        let e = safetensors_bytes(&short, &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("2 values for dims [3]"), "{e}");
        // An empty file is still a valid one.
        let bytes = safetensors_bytes(&[], &BTreeMap::new()).unwrap();
        assert!(candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .unwrap()
            .is_empty());
    }
}
