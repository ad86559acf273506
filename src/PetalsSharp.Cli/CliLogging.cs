using Microsoft.Extensions.Logging;

namespace PetalsSharp.Cli;

/// <summary>The long-running commands' logs: one timestamped line each, on stderr, so stdout stays parseable.</summary>
public static class CliLogging
{
    public static ILoggerFactory Create(LogLevel minimum) => LoggerFactory.Create(b => b
        .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace)
        .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; })
        .AddFilter("Microsoft", LogLevel.Warning)
        .AddFilter("Grpc", LogLevel.Warning)
        .SetMinimumLevel(minimum));
}
