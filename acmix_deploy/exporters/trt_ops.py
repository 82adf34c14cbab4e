"""ONNX operators that TensorRT 10's ONNX parser accepts.

Transcribed from NVIDIA's onnx-tensorrt support matrix, ``docs/operators.md`` of the
``release/10.x`` line ("TensorRT 10.0 supports operators in the inclusive range of opset 9 to
opset 20"; rows marked "Y", commit 96e7811 of June 2024).  The matrix adds per-operator
restrictions (e.g. ``Conv``'s weights must be an initializer, ``TopK``'s ``K`` a constant)
that a name check cannot see; those are found by the engine build itself.  Not supported
(rows marked "N"): every ``Sequence*``/``Optional*`` and string operator, ``QLinearConv``,
``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeLinear`` (use Q/DQ
pairs), ``Bitwise*``, ``BitShift``, ``DFT``/``STFT`` and the window functions, ``Col2Im``,
``Compress``, ``Det``, ``MaxRoiPool``, ``MaxUnpool``, ``Unique`` and the training losses.

Since TensorRT 8.4's matrix (the list this module held before) the parser gained, among
others, ``HardSwish`` (``nn.Hardswish``), ``Gelu``, ``Mish``, ``GroupNormalization``,
``LayerNormalization``, ``Mod``, ``NonZero``, ``IsInf``, ``Reciprocal``, ``OneHot``, ``Trilu``,
``GridSample``, ``RoiAlign`` and ``CastLike``.

The list is enforced only where the graph is meant for TensorRT (``export_onnx(...,
for_tensorrt=True)``: engine builds); any other ONNX export (ONNX Runtime, Triton's
``onnxruntime_onnx`` backend) only warns about operators outside it.
"""

TENSORRT_VERSION = "10.0"

TENSORRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
