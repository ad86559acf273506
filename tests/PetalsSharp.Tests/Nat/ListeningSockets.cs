namespace PetalsSharp.Tests.Nat;

/// <summary>The TCP ports a process listens on, from /proc (its socket inodes matched against the LISTEN entries).</summary>
public static class ListeningSockets
{
    public static IReadOnlyList<int> TcpPorts(int pid)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.GetFiles($"/proc/{pid}/fd"))
        {
            string? target;
            try { target = new FileInfo(fd).LinkTarget; }
            catch (IOException) { continue; }
            catch (UnauthorizedAccessException) { continue; }
            if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal)) inodes.Add(target[8..^1]);
        }
        var ports = new List<int>();
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            if (!File.Exists(table)) continue;
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode; st 0A is LISTEN
                if (f.Length > 9 && f[3] == "0A" && inodes.Contains(f[9]))
                    ports.Add(Convert.ToInt32(f[1][(f[1].LastIndexOf(':') + 1)..], 16));
            }
        }
        return ports;
    }
}
