"""ONNX operators that TensorRT's ONNX parser accepts.

Taken from the support matrix of onnx-tensorrt (``docs/operators.md``, rows
marked "Y"); the list is conservative: an operator missing here may be
supported by newer releases, but an exported graph that only uses operators
listed here parses with every TensorRT 8.4 or newer, except
``LayerNormalization`` (the Swin models' normalisation, opset 17), which the
parser supports from TensorRT 8.6 on (onnx-tensorrt 8.6-EA support matrix).  Notable absences:
``Mod``, ``NonZero``, ``IsInf``, ``Reciprocal``, ``OneHot``, ``Unique`` and
every ``Sequence*`` operator.
"""

TENSORRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual
    Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or
    Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze
    Upsample Where Xor
    """.split()
)
