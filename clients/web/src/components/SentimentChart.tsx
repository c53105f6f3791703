// Per-turn sentiment as an SVG line chart, with the same figures as a table for screen readers.
import { TableHead } from "./TableHead.js";

export interface SentimentPoint {
  turn: number;
  score: number;
  speaker: string;
}

const WIDTH = 560;
const HEIGHT = 180;
const PAD = 28;

export function SentimentChart({ points, title = "Sentiment per turn" }: { points: SentimentPoint[]; title?: string }) {
  const turns = Math.max(2, ...points.map((p) => p.turn));
  const x = (turn: number) => PAD + ((turn - 1) / Math.max(1, turns - 1)) * (WIDTH - 2 * PAD);
  const y = (score: number) => HEIGHT / 2 - score * (HEIGHT / 2 - PAD / 2);
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.turn).toFixed(1)},${y(p.score).toFixed(1)}`).join(" ");
  return (
    <figure className="chart" aria-labelledby="sentiment-title">
      <figcaption id="sentiment-title">{title}</figcaption>
      <svg
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        role="img"
        aria-label={`${title}: ${points.length} turns scored`}
        data-testid="sentiment-chart"
        data-points={points.length}
        preserveAspectRatio="none"
      >
        <line x1={PAD} x2={WIDTH - PAD} y1={y(0)} y2={y(0)} className="axis" />
        <text x={4} y={y(1) + 4} className="tick">+1</text>
        <text x={8} y={y(0) + 4} className="tick">0</text>
        <text x={4} y={y(-1) + 4} className="tick">−1</text>
        {path && <path d={path} className="line" fill="none" />}
        {points.map((p) => (
          <circle key={`${p.turn}-${p.speaker}`} cx={x(p.turn)} cy={y(p.score)} r={4} className="point">
            <title>{`Turn ${p.turn}, ${p.speaker}: ${p.score.toFixed(2)}`}</title>
          </circle>
        ))}
      </svg>
      <details>
        <summary>Sentiment as a table</summary>
        <table>
          <TableHead columns={["Turn", "Speaker", "Score"]} />
          <tbody>
            {points.map((p) => (
              <tr key={`${p.turn}-${p.speaker}`}>
                <td>{p.turn}</td>
                <td>{p.speaker}</td>
                <td>{p.score.toFixed(2)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}
