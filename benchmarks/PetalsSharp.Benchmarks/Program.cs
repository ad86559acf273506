using PetalsSharp.Benchmarks;

// Benchmarks measure; they never assert. Usage:
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- engine [--model DIR | --family llama|mixtral|...] [--prompt 64] [--new 128]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- matrows [--ms 300]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- swarm [--model DIR] [--servers 3] [--rounds 5] [--no-push]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- wan [--model DIR] [--delay-ms 50]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- speculative [--model DIR] [--delay-ms 50] [--new 32] [--rounds 3]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- trust [--model DIR] [--servers 3] [--rounds 5] [--verify-rate 0.05]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- relay [--model DIR] [--rounds 5] [--steps 200]
//   dotnet run --project benchmarks/PetalsSharp.Benchmarks -c Release -- memory --model DIR [--dtype bf16] [--cache-bytes 270000000] [--prompt 64] [--new 64]
PetalsSharp.Runtime.Configure();
var command = args.FirstOrDefault() ?? "engine";
var options = BenchArgs.Parse(args.Skip(1).ToArray());
switch (command)
{
    case "engine":
        await EngineBenchmark.RunAsync(options);
        return 0;
    case "matrows":
        await MatRowsBenchmark.RunAsync(options);
        return 0;
    case "hop":
        await HopBenchmark.RunAsync(options);
        return 0;
    case "wan":
        await WanBenchmark.RunAsync(options);
        return 0;
    case "swarm":
        await SwarmBenchmark.RunAsync(options);
        return 0;
    case "speculative":
        await SpeculativeBenchmark.RunAsync(options);
        return 0;
    case "trust":
        await TrustBenchmark.RunAsync(options);
        return 0;
    case "relay":
        await RelayBenchmark.RunAsync(options);
        return 0;
    case "memory":
        await MemoryBenchmark.RunAsync(options);
        return 0;
    default:
        Console.Error.WriteLine($"unknown benchmark '{command}' (available: engine, matrows, swarm, hop, wan, speculative, trust, relay, memory)");
        return 2;
}
