import KVMAnalysis
import KVMExits

/// One self-contained HTML page (inline CSS, JS and SVG; nothing fetched): the exit rate per reason over time
/// and a heatmap of exit→entry latencies (time × latency bucket), for all VMs, each VM, or each VM × vCPU
/// (a selector). The data is embedded as JSON in `<script id="kvmscope-data">`; the page draws it. The time axis
/// (seconds from the first bin) has one unit, s, ms or µs by its span, and one number of decimals by its step.
public enum HTMLReport {
    /// One selectable view of the page (``TimelineGroup``, computed in KVMAnalysis).
    public typealias Group = TimelineGroup

    /// The groups of a timeline (``ExitTimelineView``): "All VMs", then each VM, then each VM × vCPU.
    public static func groups(_ t: ExitTimeline, snapshot: AggregateSnapshot, filter: SummaryFilter) -> [Group] {
        ExitTimelineView(t, snapshot: snapshot, filter: filter).groups
    }

    /// The data the page draws, from the view-model only; `note` (when given) is shown above the charts.
    public static func dataJSON(_ view: ExitTimelineView, title: String, note: String? = nil) -> JSONValue {
        .object((note.map { [("note", JSONValue.string($0))] } ?? []) + [
            ("title", .string(title)),
            ("bin_ns", .uint(view.binWidth)),
            ("bins", .uint(UInt64(view.binCount))),
            ("latency_buckets", .array((0..<ExitTimeline.latencyBuckets).map {
                .string($0 == 0 ? "<256ns" : Durations.adaptive(ExitTimeline.latencyLowerBound($0)))
            })),
            ("groups", .array(view.groups.map { g in
                .object([
                    ("label", .string(g.label)),
                    ("series", .object(g.series.map { ($0.reason, .array($0.counts.map { .uint($0) })) })),
                    ("heat", .array(g.heat.map { .uint($0) })),
                ])
            })),
        ])
    }

    /// The page of a timeline: builds its view-model (``ExitTimelineView``) and renders that.
    public static func render(timeline: ExitTimeline, snapshot: AggregateSnapshot, filter: SummaryFilter,
                              title: String) -> String {
        render(ExitTimelineView(timeline, snapshot: snapshot, filter: filter), title: title)
    }

    /// The page of a timeline's view-model.
    /// - Parameter note: a line shown above the charts, e.g. why they are empty (a trace without kvm_exit: the
    ///   kvm events and userspace exit reasons it does have). A page without groups always says it has no exits.
    public static func render(_ view: ExitTimelineView, title: String, note: String? = nil) -> String {
        let data = dataJSON(view, title: title, note: note)
        // "<" never appears raw inside the script element.
        let json = data.serialized().map { $0 == "<" ? "\\u003c" : String($0) }.joined()
        let safeTitle = title.map { c -> String in
            switch c {
            case "<": "&lt;"
            case ">": "&gt;"
            case "&": "&amp;"
            default: String(c)
            }
        }.joined()
        return page.replacingPlaceholder("@TITLE@", with: safeTitle).replacingPlaceholder("@DATA@", with: json)
    }

    static let page = #"""
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>kvmscope: @TITLE@</title>
        <style>
        body{font:14px system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
        h1{font-size:18px;margin:0 0 8px} h2{font-size:15px;margin:18px 0 4px}
        .note{color:#666;font-size:12px} svg{display:block;background:#fafafa;border:1px solid #ddd}
        .legend span{display:inline-block;margin-right:14px;font-size:12px}
        .legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
        text{font:11px system-ui,sans-serif;fill:#444}
        #message{margin:8px 0;padding:8px 12px;background:#fff4d6;border:1px solid #e0c36c;display:none}
        </style></head><body>
        <h1>kvmscope report: @TITLE@</h1>
        <div id="message"></div>
        <label>Show: <select id="group"></select></label>
        <h2>Exit rate per reason (exits/s)</h2><div id="legend" class="legend"></div><svg id="rate" width="1100" height="300"></svg>
        <h2>Exit→entry latency heatmap</h2><div class="note">exits per time bin and latency bucket (darker: more); blocking exits (HLT) excluded</div>
        <svg id="heat" width="1100" height="330"></svg>
        <script id="kvmscope-data" type="application/json">@DATA@</script>
        <script>
        (function(){
        const D=JSON.parse(document.getElementById('kvmscope-data').textContent);
        const NS='http://www.w3.org/2000/svg', C=['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
        const sel=document.getElementById('group');
        const msg=document.getElementById('message');
        if(D.note||!D.groups.length){msg.textContent=D.note||'No kvm_exit events in this trace: no exit rate or latency to chart.';msg.style.display='block';}
        if(!D.groups.length)return;
        D.groups.forEach((g,i)=>{const o=document.createElement('option');o.value=i;o.textContent=g.label;sel.appendChild(o);});
        function el(p,n,a,t){const e=document.createElementNS(NS,n);for(const k in a)e.setAttribute(k,a[k]);if(t!==undefined)e.textContent=t;p.appendChild(e);return e;}
        function axisX(svg,L,W,H,T){const span=D.bins*D.bin_ns/1e9,[u,k]=span>=1?['s',1]:span>=1e-3?['ms',1e3]:['µs',1e6],st=span*k/5,d=st>=10?0:st>=1?1:st>=0.1?2:3;
          for(let i=0;i<=5;i++){const x=L+W*i/5;el(svg,'line',{x1:x,x2:x,y1:T+H,y2:T+H+4,stroke:'#444'});el(svg,'text',{x:x,y:T+H+16,'text-anchor':'middle'},(span*k*i/5).toFixed(d)+u);}}
        function draw(){
          const g=D.groups[+sel.value], bs=D.bin_ns/1e9, n=D.bins;
          const rate=document.getElementById('rate'); rate.innerHTML='';
          const L=70,T=10,W=1010,H=250; let max=1;
          g_series=Object.entries(g.series);
          g_series.forEach(([r,c])=>c.forEach(v=>{max=Math.max(max,v/bs);}));
          el(rate,'line',{x1:L,x2:L+W,y1:T+H,y2:T+H,stroke:'#444'});el(rate,'line',{x1:L,x2:L,y1:T,y2:T+H,stroke:'#444'});
          for(let i=0;i<=4;i++){const y=T+H-H*i/4;el(rate,'text',{x:L-6,y:y+4,'text-anchor':'end'},Math.round(max*i/4).toLocaleString('en-US'));el(rate,'line',{x1:L,x2:L+W,y1:y,y2:y,stroke:'#e4e4e4'});}
          axisX(rate,L,W,H,T);
          const leg=document.getElementById('legend'); leg.innerHTML='';
          g_series.forEach(([r,c],k)=>{const col=k<C.length?C[k]:'hsl('+Math.round(k*137.508%360)+','+(k%2?70:50)+'%,'+(k%2?38:52)+'%)';
            const pts=c.map((v,i)=>(L+W*(i+0.5)/n).toFixed(1)+','+(T+H-H*(v/bs)/max).toFixed(1)).join(' ');
            el(rate,'polyline',{points:pts,fill:'none',stroke:col,'stroke-width':1.5});
            const s=document.createElement('span');const sw=document.createElement('i');sw.style.background=col;s.appendChild(sw);s.appendChild(document.createTextNode(r+' ('+c.reduce((a,b)=>a+b,0)+')'));leg.appendChild(s);});
          const heat=document.getElementById('heat'); heat.innerHTML='';
          const B=D.latency_buckets.length; let lo=B,hi=-1,hm=0;
          for(let i=0;i<g.heat.length;i++){const v=g.heat[i];if(v>0){const b=i%B;lo=Math.min(lo,b);hi=Math.max(hi,b);hm=Math.max(hm,v);}}
          const HL=70,HT=10,HW=1010,HH=280;
          el(heat,'line',{x1:HL,x2:HL+HW,y1:HT+HH,y2:HT+HH,stroke:'#444'});
          if(hi<0){el(heat,'text',{x:HL+20,y:HT+40},D.note?'no exit→entry latencies (no kvm_exit in this trace)':'no paired exits (no kvm_entry after the exits)');axisX(heat,HL,HW,HH,HT);return;}
          const rows=hi-lo+1,rh=HH/rows,cw=HW/n;
          for(let b=lo;b<=hi;b++){const y=HT+HH-(b-lo+1)*rh;el(heat,'text',{x:HL-6,y:y+rh/2+4,'text-anchor':'end'},D.latency_buckets[b]);}
          for(let i=0;i<n;i++)for(let b=lo;b<=hi;b++){const v=g.heat[i*B+b];if(!v)continue;
            const a=0.15+0.85*Math.log(1+v)/Math.log(1+hm);
            el(heat,'rect',{x:(HL+i*cw).toFixed(2),y:(HT+HH-(b-lo+1)*rh).toFixed(2),width:Math.max(cw,1).toFixed(2),height:rh.toFixed(2),fill:'rgba(49,54,149,'+a.toFixed(3)+')'},undefined).appendChild(document.createElementNS(NS,'title')).textContent=v+' exits, '+D.latency_buckets[b];}
          axisX(heat,HL,HW,HH,HT);
        }
        let g_series=[];
        sel.addEventListener('change',draw); draw();
        })();
        </script></body></html>
        """#
}

extension String {
    /// Replaces the one occurrence of a placeholder (no Foundation).
    func replacingPlaceholder(_ placeholder: String, with value: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: placeholder) {
            out += rest[..<r.lowerBound]
            out += value
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
