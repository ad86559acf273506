using System.Buffers.Binary;
using Google.Protobuf;
using PetalsSharp.Wire.V1;
using static PetalsSharp.Tests.Security.BlockTarget;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// Tensors that are wrong in themselves: dtype, shape, values (NaN/Inf) and payload length, each sent wherever the
/// protocol carries such a tensor (Forward, Backward, an inference step, deep prompts, beam ids).
/// </summary>
static class BlockTensorCases
{
    const string S = "block service (gRPC)";
    static readonly string[] Invalid = ["InvalidArgument"];

    public static IEnumerable<HostileCase> All(BlockTarget b) =>
        Dtypes(b).Concat(Shapes(b)).Concat(NonFinite(b)).Concat(Truncated(b));

    /// <summary>Places a [B, T, 64] hidden-state tensor can be sent; the Backward one pairs it with honest hidden states.</summary>
    static (string Where, Func<WireTensor, Task<Outcome>> Send)[] HiddenTargets(BlockTarget b, bool backward = true)
    {
        var list = new List<(string, Func<WireTensor, Task<Outcome>>)>
        {
            ("Forward hidden", t => b.ForwardAsync(t)),
            ("inference step", t => b.StepAsync(t)),
        };
        if (backward) list.Add(("Backward grad_output", t => b.BackwardAsync(Hidden(1, 2), t)));
        return [.. list];
    }

    static HostileCase Case(string category, string name, Func<Task<Outcome>> run, params string[] expected) =>
        new(S, category, name, expected.Length == 0 ? Invalid : expected, run);

    static IEnumerable<HostileCase> Dtypes(BlockTarget b)
    {
        const string C = "wrong dtype";
        var data = Float32s(2 * HiddenSize, _ => 0.5f);
        foreach (var dtype in new[] { DType.Unspecified, DType.Float16, DType.Bfloat16, DType.Int64, (DType)5, (DType)(-1) })
            foreach (var (where, send) in HiddenTargets(b))
                yield return Case(C, $"{where} as dtype {(int)dtype} ({dtype})", () => send(Raw([1, 2, HiddenSize], dtype, data: data)));
        yield return Case(C, "hypo_ids as float32", () => b.StepAsync(Hidden(1, 1), hypoIds: Raw([1], data: Float32s(1, _ => 0))));
        yield return Case(C, "hypo_ids as int64 with float16 compression", () => b.StepAsync(Hidden(1, 1), hypoIds: Raw([1], DType.Int64, Compression.Float16, new byte[2])));
        yield return Case(C, "hypo_ids with no dtype", () => b.StepAsync(Hidden(1, 1), hypoIds: Raw([1], DType.Unspecified, data: new byte[8])));
        yield return Case(C, "deep prompts as int64", () => b.StepAsync(Hidden(1, 2), prompts: Raw([Blocks, 1, 1, HiddenSize], DType.Int64, data: new byte[Blocks * HiddenSize * 8])));
    }

    static IEnumerable<HostileCase> Shapes(BlockTarget b)
    {
        const string C = "wrong shape or rank";
        long[][] shapes =
        [
            [HiddenSize], [2, HiddenSize], [1, 1, 2, HiddenSize], [1, 2, HiddenSize - 1], [1, 2, HiddenSize + 1], [1, 2, 0], [0, 2, HiddenSize],
            [1, -2, HiddenSize], [-1, 2, HiddenSize], [], [1, 1, 1, 1, 1, 1, 1, 1, HiddenSize], [1, 2, 1L << 40],
        ];
        foreach (var shape in shapes)
        {
            long n = shape.Aggregate(1L, (a, d) => a * d);
            var data = n is > 0 and < 1 << 20 ? new byte[n * 4] : [];
            foreach (var (where, send) in HiddenTargets(b, backward: false))
                yield return Case(C, $"{where} shaped [{string.Join(", ", shape)}]", () => send(Raw(shape, data: data)));
        }
        yield return Case(C, "Forward hidden with no tokens [1, 0, 64]", () => b.ForwardAsync(Raw([1, 0, HiddenSize])));
        yield return Case(C, "Backward grad_output longer than hidden", () => b.BackwardAsync(Hidden(1, 2), Hidden(1, 3)));
        yield return Case(C, "Backward grad_output with more rows than hidden", () => b.BackwardAsync(Hidden(1, 2), Hidden(2, 2)));
        yield return Case(C, "inference step of 2 rows in a session of 1", () => b.StepAsync(Hidden(2, 1)));
        yield return Case(C, "hypo_ids of 2 entries for 1 row", () => b.StepAsync(Hidden(1, 1), hypoIds: Ids(0, 0)));
        yield return Case(C, "hypo_ids of rank 2", () => b.StepAsync(Hidden(1, 1), hypoIds: Raw([1, 1], DType.Int64, data: new byte[8])));
        yield return Case(C, "hypo_ids of rank 0", () => b.StepAsync(Hidden(1, 1), hypoIds: Raw([], DType.Int64, data: new byte[8])));
        long[][] prompts = [[Blocks, 1, HiddenSize], [Blocks - 1, 1, 1, HiddenSize], [Blocks, 1, 1, HiddenSize / 2], [Blocks, 1, 0, HiddenSize], [Blocks, 1, 3, HiddenSize], [Blocks, 3, 1, HiddenSize]];
        foreach (var shape in prompts)
        {
            var data = new byte[shape.Aggregate(1L, (a, d) => a * d) * 4];
            yield return Case(C, $"deep prompts shaped [{string.Join(", ", shape)}] for 2 tokens", () => b.StepAsync(Hidden(1, 2), prompts: Raw(shape, data: data)));
        }
        var header = Header();
        header.WithPrompts = true;
        yield return Case(C, "Forward deep prompts for 4 of 5 blocks", () => b.CallAsync(false,
            Messages(header, ("hidden", Hidden(1, 2)), ("prompts", Raw([Blocks - 1, 1, 1, HiddenSize], data: new byte[(Blocks - 1) * HiddenSize * 4])))));
    }

    static IEnumerable<HostileCase> NonFinite(BlockTarget b)
    {
        const string C = "NaN or Inf";
        const int n = 2 * HiddenSize;
        foreach (var (name, value) in new[] { ("NaN", float.NaN), ("+Inf", float.PositiveInfinity), ("-Inf", float.NegativeInfinity) })
        {
            var encodings = new (string, WireTensor)[]
            {
                ("float32", Raw([1, 2, HiddenSize], data: Float32s(n, _ => value))),
                ("float16", Raw([1, 2, HiddenSize], c: Compression.Float16, data: Halves(n, i => BitConverter.HalfToUInt16Bits((Half)value)))),
                ("bfloat16", Raw([1, 2, HiddenSize], c: Compression.Bfloat16, data: Halves(n, i => (ushort)(BitConverter.SingleToUInt32Bits(value) >> 16)))),
            };
            foreach (var (encoding, t) in encodings)
                foreach (var (where, send) in HiddenTargets(b, backward: false))
                    yield return Case(C, $"{where} all {name} in {encoding}", () => send(t));
        }
        var oneNaN = Raw([1, 2, HiddenSize], data: Float32s(n, i => i == n - 1 ? float.NaN : 0.5f));
        foreach (var (where, send) in HiddenTargets(b))
            yield return Case(C, $"{where} with one NaN among finite values", () => send(oneNaN));
        yield return Case(C, "Backward hidden with one NaN", () => b.BackwardAsync(oneNaN, Hidden(1, 2)));
        var signalling = Raw([1, 2, HiddenSize], data: Float32s(n, _ => BitConverter.UInt32BitsToSingle(0x7F800001)));
        yield return Case(C, "Forward hidden of signalling NaNs", () => b.ForwardAsync(signalling));
        foreach (var (name, scale) in new[] { ("NaN", float.NaN), ("+Inf", float.PositiveInfinity), ("negative", -1f) })
        {
            var int8 = Raw([1, 2, HiddenSize], c: Compression.Int8Blockwise, data: new byte[n], scales: Float32s(2, _ => scale));
            foreach (var (where, send) in HiddenTargets(b, backward: false))
                yield return Case(C, $"{where} int8 with a {name} scale", () => send(int8));
        }
        var nanPrompts = Raw([Blocks, 1, 1, HiddenSize], data: Float32s(Blocks * HiddenSize, _ => float.NaN));
        yield return Case(C, "inference deep prompts of NaN", () => b.StepAsync(Hidden(1, 2), prompts: nanPrompts));
        var header = Header();
        header.WithPrompts = true;
        yield return Case(C, "Forward deep prompts of NaN", () => b.CallAsync(false, Messages(header, ("hidden", Hidden(1, 2)), ("prompts", nanPrompts))));
    }

    static IEnumerable<HostileCase> Truncated(BlockTarget b)
    {
        const string C = "truncated message";
        var full = Float32s(2 * HiddenSize, _ => 0.5f);
        foreach (var (name, length) in new[] { ("one byte short", full.Length - 1), ("half", full.Length / 2), ("empty", 0) })
            foreach (var (where, send) in HiddenTargets(b, backward: false))
                yield return Case(C, $"{where} payload {name}", () => send(Raw([1, 2, HiddenSize], data: full[..length])));
        yield return Case(C, "Forward int8 with half its scales", () => b.ForwardAsync(Raw([1, 2, HiddenSize], c: Compression.Int8Blockwise,
            data: new byte[2 * HiddenSize], scales: Float32s(1, _ => 1f))));
        var serialized = Hidden(1, 2).ToByteArray();
        foreach (var cut in new[] { 1, 2, 4, 8, 12, serialized.Length / 2, serialized.Length - 1 })
            yield return Case(C, $"Forward serialized hidden cut to {cut} of {serialized.Length} bytes", () => b.CallAsync(false,
                [new CallMessage { Header = Header() }, Chunk("hidden", cut, serialized.AsSpan(0, cut), true)]));
        yield return Case(C, "Forward chunk says last before its declared size", () => b.CallAsync(false,
            [new CallMessage { Header = Header() }, Chunk("hidden", serialized.Length, serialized.AsSpan(0, 10), true)]));
        yield return Case(C, "Forward upload closed in the middle of a tensor", () => b.CallAsync(false,
            [new CallMessage { Header = Header() }, Chunk("hidden", serialized.Length, serialized.AsSpan(0, 10), false)]));
        yield return Case(C, "Backward without grad_output", () => b.CallAsync(true, Messages(Header(), ("hidden", Hidden(1, 2)))));
        yield return Case(C, "Forward header and nothing else", () => b.CallAsync(false, [new CallMessage { Header = Header() }]));
        yield return Case(C, "Forward with no message at all", () => b.CallAsync(false, []));
        yield return Case(C, "inference step without hidden states", () => b.InferenceAsync(Open(), Step("a", null)));
    }

    static byte[] Halves(int count, Func<int, ushort> bits)
    {
        var b = new byte[count * 2];
        for (int i = 0; i < count; i++) BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(i * 2), bits(i));
        return b;
    }
}
