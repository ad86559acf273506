using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace PetalsSharp.Server;

/// <summary>
/// Renders System.Diagnostics.Metrics instruments in the Prometheus text exposition format (version 0.0.4).
/// A <see cref="MeterListener"/> aggregates what the chosen instruments record: counters and up-down counters are
/// summed, histograms are bucketed by their advised boundaries, observable instruments are read at each scrape.
/// Names: '.' becomes '_', a unit of "s" adds "_seconds", a counter adds "_total".
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    /// <summary>The Content-Type of a scrape.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    static readonly double[] DefaultBuckets = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

    readonly object _lock = new();
    readonly MeterListener _listener = new();
    // Instruments in the order they were published, so a scrape's layout is stable.
    readonly List<Series> _series = [];
    readonly Dictionary<Instrument, Series> _byInstrument = [];

    /// <param name="include">Which instruments to export (e.g. those of one meter scope).</param>
    public PrometheusExporter(Func<Instrument, bool> include)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (!include(instrument)) return;
            lock (_lock)
            {
                var series = new Series(instrument);
                _series.Add(series);
                _byInstrument[instrument] = series;
            }
            listener.EnableMeasurementEvents(instrument);
        };
        _listener.MeasurementsCompleted = (instrument, _) =>
        {
            lock (_lock)
                if (_byInstrument.Remove(instrument, out var s)) _series.Remove(s);
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _listener.Start();
    }

    /// <summary>Exports the instruments of meters created with this scope object (see <see cref="MeterOptions.Scope"/>).</summary>
    public static PrometheusExporter ForScope(object scope) => new(i => ReferenceEquals(i.Meter.Scope, scope));

    void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var labels = Labels(tags);
        lock (_lock)
            if (_byInstrument.TryGetValue(instrument, out var series)) series.Add(labels, value);
    }

    /// <summary>The current values of every exported instrument, as Prometheus text.</summary>
    public string Scrape()
    {
        lock (_lock)
            foreach (var s in _series.Where(s => s.IsObservable)) s.Points.Clear();   // observed afresh below
        _listener.RecordObservableInstruments();
        var text = new StringBuilder();
        lock (_lock)
            foreach (var s in _series) s.Write(text);
        return text.ToString();
    }

    static string Labels(ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        if (tags.Length == 0) return "";
        var pairs = new List<KeyValuePair<string, object?>>(tags.ToArray());
        pairs.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return string.Join(",", pairs.Select(p => $"{Name(p.Key)}=\"{Escape(Convert.ToString(p.Value, CultureInfo.InvariantCulture) ?? "", label: true)}\""));
    }

    /// <summary>A Prometheus metric or label name: letters, digits and '_' only.</summary>
    static string Name(string name)
    {
        var chars = name.Select(c => char.IsAsciiLetterOrDigit(c) || c == '_' ? c : '_').ToArray();
        if (chars.Length > 0 && char.IsAsciiDigit(chars[0])) return "_" + new string(chars);
        return new string(chars);
    }

    static string Escape(string text, bool label)
    {
        var s = text.Replace("\\", "\\\\").Replace("\n", "\\n");
        return label ? s.Replace("\"", "\\\"") : s;
    }

    static string Number(double v) =>
        double.IsPositiveInfinity(v) ? "+Inf" : double.IsNegativeInfinity(v) ? "-Inf" : double.IsNaN(v) ? "NaN" : v.ToString("R", CultureInfo.InvariantCulture);

    public void Dispose() => _listener.Dispose();

    enum Kind { Counter, Gauge, Histogram }

    /// <summary>One instrument's points, by label set.</summary>
    sealed class Series
    {
        readonly Kind _kind;
        readonly string _name;
        readonly string _help;
        readonly double[] _buckets = [];

        public Series(Instrument instrument)
        {
            var type = instrument.GetType().IsGenericType ? instrument.GetType().GetGenericTypeDefinition() : instrument.GetType();
            IsObservable = instrument.IsObservable;
            _kind = type == typeof(Counter<>) || type == typeof(ObservableCounter<>) ? Kind.Counter
                : type == typeof(Histogram<>) ? Kind.Histogram : Kind.Gauge;
            var name = Name(instrument.Name);
            if (instrument.Unit == "s" && !name.EndsWith("_seconds", StringComparison.Ordinal)) name += "_seconds";
            if (_kind == Kind.Counter && !name.EndsWith("_total", StringComparison.Ordinal)) name += "_total";
            _name = name;
            _help = Escape(instrument.Description ?? instrument.Name, label: false);
            if (_kind == Kind.Histogram)
                _buckets = ((instrument as Histogram<double>)?.Advice?.HistogramBucketBoundaries
                    ?? (instrument as Histogram<long>)?.Advice?.HistogramBucketBoundaries?.Select(b => (double)b)
                    ?? DefaultBuckets).Order().ToArray();
        }

        public bool IsObservable { get; }

        /// <summary>Per label set: the sum (counter), the last value (gauge), or bucket counts then sum and count (histogram).</summary>
        public Dictionary<string, double[]> Points { get; } = [];

        public void Add(string labels, double value)
        {
            if (!Points.TryGetValue(labels, out var p))
                Points[labels] = p = new double[_kind == Kind.Histogram ? _buckets.Length + 2 : 1];
            switch (_kind)
            {
                case Kind.Counter when IsObservable: p[0] = value; break;   // observable counters report their running total
                case Kind.Counter: p[0] += value; break;
                case Kind.Gauge: p[0] = IsObservable ? value : p[0] + value; break;   // an UpDownCounter sums deltas
                case Kind.Histogram:
                    int i = Array.FindIndex(_buckets, b => value <= b);
                    if (i >= 0) p[i]++;
                    p[^2] += value;
                    p[^1]++;
                    break;
            }
        }

        public void Write(StringBuilder text)
        {
            text.Append("# HELP ").Append(_name).Append(' ').Append(_help).Append('\n');
            text.Append("# TYPE ").Append(_name).Append(' ').Append(_kind.ToString().ToLowerInvariant()).Append('\n');
            foreach (var (labels, p) in Points.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                if (_kind != Kind.Histogram)
                {
                    Line(text, _name, labels, p[0]);
                    continue;
                }
                double cumulative = 0;
                for (int i = 0; i < _buckets.Length; i++)
                {
                    cumulative += p[i];
                    Line(text, _name + "_bucket", Join(labels, $"le=\"{Number(_buckets[i])}\""), cumulative);
                }
                Line(text, _name + "_bucket", Join(labels, "le=\"+Inf\""), p[^1]);
                Line(text, _name + "_sum", labels, p[^2]);
                Line(text, _name + "_count", labels, p[^1]);
            }
        }

        static string Join(string labels, string more) => labels.Length == 0 ? more : labels + "," + more;

        static void Line(StringBuilder text, string name, string labels, double value)
        {
            text.Append(name);
            if (labels.Length > 0) text.Append('{').Append(labels).Append('}');
            text.Append(' ').Append(Number(value)).Append('\n');
        }
    }
}
