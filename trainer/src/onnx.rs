//! ONNX export: a [`DenseModel`] as a plain ONNX graph (IR version 8, opset 17).
//!
//! The graph reads `pixels`, float `[N, C, H, W]` with values in [0, 1] and a symbolic batch
//! `N`; normalises them as training did (`Sub` and `Div` by per-channel constants of shape
//! `[1, C, 1, 1]`); then has one node per trainer node: `Flatten` (axis 1), `Gemm` (`transB`,
//! the `[out, in]` weights, no bias) for a linear layer, `Conv`, `Relu`, `MaxPool` and
//! `AveragePool` (k×k, stride k), `BatchNormalization` (running statistics; γ = 1 and β = 0
//! for a non-affine norm) and `Add`. It ends as the .smk graph does, with a `Softmax` over
//! axis 1: the output `probabilities`, `[N, classes]`, is what `runtime eval` ranks.
//!
//! Protocol buffers' wire format is small enough to write here: varints, little-endian
//! fixed32 floats, and length-prefixed bytes for strings and nested messages. Field numbers
//! are onnx.proto's; it is proto2, so repeated numbers are written unpacked, one key each.
//! Fields go out in field-number order and nothing depends on time or hashing: the same model
//! gives the same bytes.

use std::collections::BTreeMap;

use crate::dense::DenseModel;
use crate::error::{Error, Result};
use crate::model::Node;

/// The IR version written (8: ONNX 1.10 to 1.13, which carry opset 17).
pub const IR_VERSION: i64 = 8;
/// The default domain's opset.
pub const OPSET: i64 = 17;
/// The graph's input.
pub const INPUT: &str = "pixels";
/// The graph's output.
pub const OUTPUT: &str = "probabilities";

/// Field numbers of onnx.proto (checked against onnx 1.23's onnx.proto).
mod field {
    // ModelProto
    pub const MODEL_IR_VERSION: u32 = 1;
    pub const MODEL_PRODUCER_NAME: u32 = 2;
    pub const MODEL_PRODUCER_VERSION: u32 = 3;
    pub const MODEL_GRAPH: u32 = 7;
    pub const MODEL_OPSET_IMPORT: u32 = 8;
    pub const MODEL_METADATA_PROPS: u32 = 14;
    // OperatorSetIdProto
    pub const OPSET_DOMAIN: u32 = 1;
    pub const OPSET_VERSION: u32 = 2;
    // StringStringEntryProto
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
    // GraphProto
    pub const GRAPH_NODE: u32 = 1;
    pub const GRAPH_NAME: u32 = 2;
    pub const GRAPH_INITIALIZER: u32 = 5;
    pub const GRAPH_INPUT: u32 = 11;
    pub const GRAPH_OUTPUT: u32 = 12;
    // NodeProto
    pub const NODE_INPUT: u32 = 1;
    pub const NODE_OUTPUT: u32 = 2;
    pub const NODE_NAME: u32 = 3;
    pub const NODE_OP_TYPE: u32 = 4;
    pub const NODE_ATTRIBUTE: u32 = 5;
    // AttributeProto
    pub const ATTR_NAME: u32 = 1;
    pub const ATTR_F: u32 = 2;
    pub const ATTR_I: u32 = 3;
    pub const ATTR_INTS: u32 = 8;
    pub const ATTR_TYPE: u32 = 20;
    // TensorProto
    pub const TENSOR_DIMS: u32 = 1;
    pub const TENSOR_DATA_TYPE: u32 = 2;
    pub const TENSOR_NAME: u32 = 8;
    pub const TENSOR_RAW_DATA: u32 = 9;
    // ValueInfoProto
    pub const VALUE_NAME: u32 = 1;
    pub const VALUE_TYPE: u32 = 2;
    // TypeProto, TypeProto.Tensor
    pub const TYPE_TENSOR_TYPE: u32 = 1;
    pub const TENSOR_TYPE_ELEM_TYPE: u32 = 1;
    pub const TENSOR_TYPE_SHAPE: u32 = 2;
    // TensorShapeProto, TensorShapeProto.Dimension
    pub const SHAPE_DIM: u32 = 1;
    pub const DIM_VALUE: u32 = 1;
    pub const DIM_PARAM: u32 = 2;
}

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i64 = 1;
/// `AttributeProto.AttributeType` values.
const ATTR_FLOAT: i64 = 1;
const ATTR_INT: i64 = 2;
const ATTR_INTS: i64 = 7;

/// Wire types.
const VARINT: u64 = 0;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// One protocol-buffer message being written.
#[derive(Debug, Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u64) {
        self.varint((u64::from(field) << 3) | wire);
    }
    /// An `int64` or `int32` (negative values take ten bytes, as protobuf writes them).
    fn int(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.varint(v as u64);
    }
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u32, m: &Message) {
        self.bytes(field, &m.0);
    }
}

/// A node attribute.
#[derive(Debug)]
enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

impl Attr {
    fn encode(&self) -> Message {
        let mut m = Message::default();
        match self {
            Attr::Float(name, v) => {
                m.string(field::ATTR_NAME, name);
                m.float(field::ATTR_F, *v);
                m.int(field::ATTR_TYPE, ATTR_FLOAT);
            }
            Attr::Int(name, v) => {
                m.string(field::ATTR_NAME, name);
                m.int(field::ATTR_I, *v);
                m.int(field::ATTR_TYPE, ATTR_INT);
            }
            Attr::Ints(name, vs) => {
                m.string(field::ATTR_NAME, name);
                for &v in vs {
                    m.int(field::ATTR_INTS, v);
                }
                m.int(field::ATTR_TYPE, ATTR_INTS);
            }
        }
        m
    }
}

/// A dimension of a graph input or output.
#[derive(Debug)]
enum Dim {
    Value(usize),
    Param(&'static str),
}

/// A float tensor's `ValueInfoProto`.
fn value_info(name: &str, dims: &[Dim]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Value(v) => dim.int(field::DIM_VALUE, *v as i64),
            Dim::Param(p) => dim.string(field::DIM_PARAM, p),
        }
        shape.message(field::SHAPE_DIM, &dim);
    }
    let mut tensor = Message::default();
    tensor.int(field::TENSOR_TYPE_ELEM_TYPE, FLOAT);
    tensor.message(field::TENSOR_TYPE_SHAPE, &shape);
    let mut ty = Message::default();
    ty.message(field::TYPE_TENSOR_TYPE, &tensor);
    let mut m = Message::default();
    m.string(field::VALUE_NAME, name);
    m.message(field::VALUE_TYPE, &ty);
    m
}

/// Nodes and initializers, in the order they are added.
#[derive(Debug, Default)]
struct Graph {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
}

impl Graph {
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: &[Attr]) {
        let mut m = Message::default();
        for i in inputs {
            m.string(field::NODE_INPUT, i);
        }
        m.string(field::NODE_OUTPUT, output);
        m.string(field::NODE_NAME, name);
        m.string(field::NODE_OP_TYPE, op);
        for a in attrs {
            m.message(field::NODE_ATTRIBUTE, &a.encode());
        }
        self.nodes.push(m);
    }

    /// A float initializer; its values little-endian in `raw_data`.
    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> Result<()> {
        if dims.iter().product::<usize>() != values.len() {
            return Err(Error::Config(format!(
                "onnx: '{name}' has {} values for dims {dims:?}",
                values.len()
            )));
        }
        let mut m = Message::default();
        for &d in dims {
            m.int(field::TENSOR_DIMS, d as i64);
        }
        m.int(field::TENSOR_DATA_TYPE, FLOAT);
        m.string(field::TENSOR_NAME, name);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        m.bytes(field::TENSOR_RAW_DATA, &raw);
        self.initializers.push(m);
        Ok(())
    }
}

/// The ONNX bytes of `model`; `name` names the graph, `metadata` becomes the model's
/// `metadata_props` (in key order).
pub fn to_onnx(model: &DenseModel, name: &str, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let [c, h, w] = model.input;
    if model.normalize.len() != c {
        return Err(Error::Config(format!(
            "onnx: {} normalisation channels for {c} input channels",
            model.normalize.len()
        )));
    }
    if model.inputs.len() != model.nodes.len() {
        return Err(Error::Config("onnx: every node needs an input entry".into()));
    }
    let classes = model.classes()?;
    let mut g = Graph::default();
    let mean: Vec<f32> = model.normalize.iter().map(|m| m.0).collect();
    let std: Vec<f32> = model.normalize.iter().map(|m| m.1).collect();
    g.initializer("normalize.mean", &[1, c, 1, 1], &mean)?;
    g.initializer("normalize.std", &[1, c, 1, 1], &std)?;
    g.node(
        "Sub",
        "normalize.sub",
        &[INPUT, "normalize.mean"],
        "normalize.centred",
        &[],
    );
    g.node(
        "Div",
        "normalize",
        &["normalize.centred", "normalize.std"],
        "normalize",
        &[],
    );

    // Each node's output: named after its layer or norm (`fc1`, `layer1.bn2`), else `n{i}`.
    let mut outs: Vec<String> = Vec::with_capacity(model.nodes.len());
    let earlier = |outs: &[String], j: usize, i: usize| -> Result<String> {
        outs.get(j)
            .cloned()
            .ok_or_else(|| Error::Config(format!("onnx: node {i} reads node {j}, which does not come before it")))
    };
    let layer = |l: usize| {
        model
            .layers
            .get(l)
            .ok_or_else(|| Error::Config(format!("onnx: no layer {l}")))
    };
    for (i, node) in model.nodes.iter().enumerate() {
        let input = match model.inputs[i] {
            Some(j) => earlier(&outs, j, i)?,
            None if i == 0 => "normalize".to_string(),
            None => earlier(&outs, i - 1, i)?,
        };
        let generic = format!("n{i}");
        let out = match *node {
            Node::Flatten => {
                g.node("Flatten", &generic, &[&input], &generic, &[Attr::Int("axis", 1)]);
                generic
            }
            Node::Relu => {
                g.node("Relu", &generic, &[&input], &generic, &[]);
                generic
            }
            Node::MaxPool(k) | Node::AvgPool(k) => {
                let op = if matches!(node, Node::MaxPool(_)) {
                    "MaxPool"
                } else {
                    "AveragePool"
                };
                let k = k as i64;
                let attrs = [
                    Attr::Ints("kernel_shape", vec![k, k]),
                    Attr::Ints("strides", vec![k, k]),
                ];
                g.node(op, &generic, &[&input], &generic, &attrs);
                generic
            }
            Node::Linear(l) => {
                let l = layer(l)?;
                if l.dims.len() != 2 {
                    return Err(Error::Config(format!(
                        "onnx: linear layer {} has dims {:?}",
                        l.name, l.dims
                    )));
                }
                let weight = format!("{}.weight", l.name);
                g.initializer(&weight, &l.dims, &l.values)?;
                g.node("Gemm", &l.name, &[&input, &weight], &l.name, &[Attr::Int("transB", 1)]);
                l.name.clone()
            }
            Node::Conv {
                layer: l,
                stride,
                padding,
            } => {
                let l = layer(l)?;
                let &[_, _, kh, kw] = l.dims.as_slice() else {
                    return Err(Error::Config(format!(
                        "onnx: conv layer {} has dims {:?}",
                        l.name, l.dims
                    )));
                };
                let weight = format!("{}.weight", l.name);
                g.initializer(&weight, &l.dims, &l.values)?;
                let (s, p) = (stride as i64, padding as i64);
                let attrs = [
                    Attr::Ints("kernel_shape", vec![kh as i64, kw as i64]),
                    Attr::Ints("strides", vec![s, s]),
                    Attr::Ints("pads", vec![p, p, p, p]),
                ];
                g.node("Conv", &l.name, &[&input, &weight], &l.name, &attrs);
                l.name.clone()
            }
            Node::Norm(n) => {
                let n = model
                    .norms
                    .get(n)
                    .ok_or_else(|| Error::Config(format!("onnx: no batch norm {n}")))?;
                let channels = n.mean.len();
                let (scale, bias) = match &n.affine {
                    Some((gamma, beta)) => {
                        let names = (format!("{}.weight", n.name), format!("{}.bias", n.name));
                        g.initializer(&names.0, &[channels], gamma)?;
                        g.initializer(&names.1, &[channels], beta)?;
                        names
                    }
                    None => {
                        // Non-affine: BatchNormalization still takes a scale and a shift.
                        let names = (format!("{}.unit_scale", n.name), format!("{}.zero_shift", n.name));
                        g.initializer(&names.0, &[channels], &vec![1.0; channels])?;
                        g.initializer(&names.1, &[channels], &vec![0.0; channels])?;
                        names
                    }
                };
                let (mean, var) = (format!("{}.running_mean", n.name), format!("{}.running_var", n.name));
                g.initializer(&mean, &[channels], &n.mean)?;
                g.initializer(&var, &[channels], &n.var)?;
                g.node(
                    "BatchNormalization",
                    &n.name,
                    &[&input, &scale, &bias, &mean, &var],
                    &n.name,
                    &[Attr::Float("epsilon", n.eps as f32)],
                );
                n.name.clone()
            }
            Node::Add(a, b) => {
                let (a, b) = (earlier(&outs, a, i)?, earlier(&outs, b, i)?);
                g.node("Add", &generic, &[&a, &b], &generic, &[]);
                generic
            }
        };
        outs.push(out);
    }
    let last = outs
        .last()
        .ok_or_else(|| Error::Config("onnx: the model has no nodes".into()))?;
    g.node("Softmax", "softmax", &[last], OUTPUT, &[Attr::Int("axis", 1)]);

    let mut graph = Message::default();
    for n in &g.nodes {
        graph.message(field::GRAPH_NODE, n);
    }
    graph.string(field::GRAPH_NAME, name);
    for t in &g.initializers {
        graph.message(field::GRAPH_INITIALIZER, t);
    }
    let input = value_info(INPUT, &[Dim::Param("N"), Dim::Value(c), Dim::Value(h), Dim::Value(w)]);
    graph.message(field::GRAPH_INPUT, &input);
    graph.message(
        field::GRAPH_OUTPUT,
        &value_info(OUTPUT, &[Dim::Param("N"), Dim::Value(classes)]),
    );

    let mut m = Message::default();
    m.int(field::MODEL_IR_VERSION, IR_VERSION);
    m.string(field::MODEL_PRODUCER_NAME, "smk-trainer");
    m.string(field::MODEL_PRODUCER_VERSION, env!("CARGO_PKG_VERSION"));
    m.message(field::MODEL_GRAPH, &graph);
    let mut opset = Message::default();
    opset.string(field::OPSET_DOMAIN, "");
    opset.int(field::OPSET_VERSION, OPSET);
    m.message(field::MODEL_OPSET_IMPORT, &opset);
    for (k, v) in metadata {
        let mut e = Message::default();
        e.string(field::ENTRY_KEY, k);
        e.string(field::ENTRY_VALUE, v);
        m.message(field::MODEL_METADATA_PROPS, &e);
    }
    Ok(m.0)
}

#[cfg(test)]
mod tests {
    //! The encoder checked by a small protocol-buffer reader written from onnx.proto's field
    //! numbers (as literals, apart from the encoder's constants).

    use super::*;
    use crate::dense::{DenseLayer, DenseNorm};

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Value<'a> {
        Varint(u64),
        Fixed32(u32),
        Bytes(&'a [u8]),
    }

    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().expect("truncated varint");
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
        }
        panic!("varint longer than ten bytes");
    }

    /// Every field of a message, in order.
    fn fields(mut b: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut b)),
                2 => {
                    let n = varint(&mut b) as usize;
                    let (v, rest) = b.split_at(n);
                    b = rest;
                    Value::Bytes(v)
                }
                5 => {
                    let (v, rest) = b.split_at(4);
                    b = rest;
                    Value::Fixed32(u32::from_le_bytes(v.try_into().unwrap()))
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push(((key >> 3) as u32, value));
        }
        out
    }

    fn all(b: &[u8], field: u32) -> Vec<Value<'_>> {
        fields(b).into_iter().filter(|f| f.0 == field).map(|f| f.1).collect()
    }
    fn messages(b: &[u8], field: u32) -> Vec<&[u8]> {
        all(b, field)
            .into_iter()
            .map(|v| match v {
                Value::Bytes(x) => x,
                v => panic!("field {field}: {v:?}"),
            })
            .collect()
    }
    fn one(b: &[u8], field: u32) -> &[u8] {
        let v = messages(b, field);
        assert_eq!(v.len(), 1, "field {field}");
        v[0]
    }
    fn string(b: &[u8], field: u32) -> String {
        String::from_utf8(one(b, field).to_vec()).unwrap()
    }
    fn strings(b: &[u8], field: u32) -> Vec<String> {
        messages(b, field)
            .into_iter()
            .map(|x| String::from_utf8(x.to_vec()).unwrap())
            .collect()
    }
    fn ints(b: &[u8], field: u32) -> Vec<i64> {
        all(b, field)
            .into_iter()
            .map(|v| match v {
                Value::Varint(x) => x as i64,
                v => panic!("field {field}: {v:?}"),
            })
            .collect()
    }
    fn int(b: &[u8], field: u32) -> i64 {
        let v = ints(b, field);
        assert_eq!(v.len(), 1, "field {field}");
        v[0]
    }

    /// `{name: (type, ints, float)}` of a NodeProto's attributes.
    fn attributes(node: &[u8]) -> BTreeMap<String, (i64, Vec<i64>, Option<f32>)> {
        messages(node, 5)
            .into_iter()
            .map(|a| {
                let f = all(a, 2).first().map(|v| match v {
                    Value::Fixed32(x) => f32::from_bits(*x),
                    v => panic!("{v:?}"),
                });
                let mut is = ints(a, 8);
                is.extend(ints(a, 3));
                (string(a, 1), (int(a, 20), is, f))
            })
            .collect()
    }

    /// `(name, dims, values)` of a TensorProto.
    fn tensor(t: &[u8]) -> (String, Vec<i64>, Vec<f32>) {
        assert_eq!(int(t, 2), 1, "FLOAT");
        let raw = one(t, 9);
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (string(t, 8), ints(t, 1), values)
    }

    /// `(name, dims)` of a ValueInfoProto, a symbolic dimension as `-1` with its name.
    fn value_info(v: &[u8]) -> (String, Vec<(i64, String)>) {
        let ty = one(v, 2);
        let tensor = one(ty, 1);
        assert_eq!(int(tensor, 1), 1, "FLOAT");
        let dims = messages(one(tensor, 2), 1)
            .into_iter()
            .map(|d| match ints(d, 1).first() {
                Some(&v) => (v, String::new()),
                None => (-1, string(d, 2)),
            })
            .collect();
        (string(v, 1), dims)
    }

    /// Conv → BatchNorm → Relu → Add (of the conv) → MaxPool → AveragePool → Flatten → Gemm.
    fn tiny() -> DenseModel {
        DenseModel {
            input: [1, 4, 4],
            normalize: vec![(0.5, 0.25)],
            nodes: vec![
                Node::Conv {
                    layer: 0,
                    stride: 1,
                    padding: 1,
                },
                Node::Norm(0),
                Node::Relu,
                Node::Add(2, 0),
                Node::MaxPool(2),
                Node::AvgPool(2),
                Node::Flatten,
                Node::Linear(1),
            ],
            inputs: vec![None; 8],
            layers: vec![
                DenseLayer {
                    name: "conv1".into(),
                    dims: vec![2, 1, 3, 3],
                    values: (0..18).map(|v| v as f32 / 10.0 - 0.9).collect(),
                },
                DenseLayer {
                    name: "fc".into(),
                    dims: vec![3, 2],
                    values: vec![1.0, -2.0, 0.5, 0.0, -0.25, 3.0],
                },
            ],
            norms: vec![DenseNorm {
                name: "bn1".into(),
                mean: vec![0.1, -0.2],
                var: vec![1.5, 0.75],
                affine: None,
                eps: 1e-5,
            }],
        }
    }

    #[test]
    fn a_tiny_graph_decodes_to_what_was_encoded() {
        let model = tiny();
        let meta = BTreeMap::from([("model".to_string(), "tiny".to_string())]);
        let bytes = to_onnx(&model, "smk-tiny", &meta).unwrap();
        assert_eq!(bytes, to_onnx(&model, "smk-tiny", &meta).unwrap(), "deterministic");

        // ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8, metadata_props 14.
        assert_eq!(int(&bytes, 1), 8);
        assert_eq!(string(&bytes, 2), "smk-trainer");
        let opset = one(&bytes, 8);
        assert_eq!(string(opset, 1), "");
        assert_eq!(int(opset, 2), 17);
        let props = one(&bytes, 14);
        assert_eq!((string(props, 1), string(props, 2)), ("model".into(), "tiny".into()));

        // GraphProto: node 1, name 2, initializer 5, input 11, output 12.
        let graph = one(&bytes, 7);
        assert_eq!(string(graph, 2), "smk-tiny");
        let nodes = messages(graph, 1);
        // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
        let ops: Vec<String> = nodes.iter().map(|n| string(n, 4)).collect();
        assert_eq!(
            ops,
            [
                "Sub",
                "Div",
                "Conv",
                "BatchNormalization",
                "Relu",
                "Add",
                "MaxPool",
                "AveragePool",
                "Flatten",
                "Gemm",
                "Softmax"
            ]
        );
        let io: Vec<(Vec<String>, Vec<String>)> = nodes.iter().map(|n| (strings(n, 1), strings(n, 2))).collect();
        assert_eq!(io[0].0, ["pixels", "normalize.mean"]);
        assert_eq!(io[2].0, ["normalize", "conv1.weight"]);
        assert_eq!(io[2].1, ["conv1"]);
        assert_eq!(
            io[3].0,
            [
                "conv1",
                "bn1.unit_scale",
                "bn1.zero_shift",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
        assert_eq!(io[5].0, ["n2", "conv1"], "Add reads the ReLU and the conv");
        assert_eq!(io[9].0, ["n6", "fc.weight"]);
        assert_eq!(io[10], (vec!["fc".to_string()], vec!["probabilities".to_string()]));

        // AttributeProto: name 1, f 2, i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7).
        let conv = attributes(nodes[2]);
        assert_eq!(conv["kernel_shape"], (7, vec![3, 3], None));
        assert_eq!(conv["strides"], (7, vec![1, 1], None));
        assert_eq!(conv["pads"], (7, vec![1, 1, 1, 1], None));
        assert_eq!(attributes(nodes[3])["epsilon"], (1, vec![], Some(1e-5)));
        for pool in [6, 7] {
            let a = attributes(nodes[pool]);
            assert_eq!(a["kernel_shape"], (7, vec![2, 2], None));
            assert_eq!(a["strides"], (7, vec![2, 2], None));
        }
        assert_eq!(attributes(nodes[8])["axis"], (2, vec![1], None));
        assert_eq!(attributes(nodes[9])["transB"], (2, vec![1], None));
        assert_eq!(attributes(nodes[10])["axis"], (2, vec![1], None));
        assert!(attributes(nodes[4]).is_empty());

        // TensorProto: dims 1, data_type 2, name 8, raw_data 9.
        let inits: BTreeMap<String, (Vec<i64>, Vec<f32>)> = messages(graph, 5)
            .into_iter()
            .map(|t| {
                let (n, d, v) = tensor(t);
                (n, (d, v))
            })
            .collect();
        assert_eq!(inits.len(), 8);
        assert_eq!(inits["normalize.mean"], (vec![1, 1, 1, 1], vec![0.5]));
        assert_eq!(inits["normalize.std"], (vec![1, 1, 1, 1], vec![0.25]));
        assert_eq!(
            inits["conv1.weight"],
            (vec![2, 1, 3, 3], model.layers[0].values.clone())
        );
        assert_eq!(inits["fc.weight"], (vec![3, 2], model.layers[1].values.clone()));
        assert_eq!(inits["bn1.unit_scale"].1, [1.0, 1.0]);
        assert_eq!(inits["bn1.zero_shift"].1, [0.0, 0.0]);
        assert_eq!(inits["bn1.running_mean"], (vec![2], vec![0.1, -0.2]));
        assert_eq!(inits["bn1.running_var"], (vec![2], vec![1.5, 0.75]));

        // ValueInfoProto: name 1, type 2 → tensor_type 1 → elem_type 1, shape 2 → dim 1.
        let n = || (-1, "N".to_string());
        let d = |v| (v, String::new());
        assert_eq!(
            value_info(one(graph, 11)),
            ("pixels".into(), vec![n(), d(1), d(4), d(4)])
        );
        assert_eq!(value_info(one(graph, 12)), ("probabilities".into(), vec![n(), d(3)]));
    }

    #[test]
    fn affine_norms_and_varints_encode() {
        let mut model = tiny();
        model.norms[0].affine = Some((vec![2.0, 3.0], vec![-1.0, 1.0]));
        let bytes = to_onnx(&model, "g", &BTreeMap::new()).unwrap();
        let graph = one(&bytes, 7);
        let bn = messages(graph, 1)[3];
        assert_eq!(strings(bn, 1)[1..3], ["bn1.weight", "bn1.bias"]);
        let names: Vec<String> = messages(graph, 5).into_iter().map(|t| tensor(t).0).collect();
        assert!(names.contains(&"bn1.weight".to_string()) && !names.contains(&"bn1.unit_scale".to_string()));
        // Multi-byte varints: a 300-wide layer's dims, and a negative int64 (ten bytes).
        let mut m = Message::default();
        m.int(1, 300);
        m.int(2, -1);
        assert_eq!(m.0[..3], [0x08, 0xac, 0x02]);
        assert_eq!(m.0.len(), 3 + 1 + 10);
        assert_eq!(ints(&m.0, 2), [-1]);
    }

    #[test]
    fn inconsistent_graphs_are_refused() {
        let mut model = tiny();
        model.nodes[3] = Node::Add(2, 5);
        let e = to_onnx(&model, "g", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("node 3 reads node 5"), "{e}");
        let mut model = tiny();
        model.nodes[7] = Node::Linear(4);
        let e = to_onnx(&model, "g", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("layer 4"), "{e}");
        let mut model = tiny();
        model.nodes.pop();
        model.inputs.pop();
        let e = to_onnx(&model, "g", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("linear layer"), "{e}");
    }
}
