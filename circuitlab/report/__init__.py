"""`report.html` of a run dir and `index.html` of a sweep dir or of `results/`, from the run dir's files alone
(results.csv, the side-table CSVs, figures/*.png, manifest.json, run_config.json, inputs.json, examples.json; pandas
only, no torch, no model), like the figures.

The data a page shows is assembled in Python, one module per part:
  files.py    what a run dir holds (manifest, overrides, status, figures, side tables) and where the run dirs are
  values.py   how one value reads (numbers, table cells, tokens)
  inline.py   figures, thumbnails and CSVs carried in the page as data URIs
  tables.py   results.csv by location x metric, the side tables, the baselines
  prompts.py  prompt pairs token by token (examples.json)
  page.py     one run's report, section by section
  index.py    the index of a sweep dir or of results/
  render.py   the Jinja2 templates (templates/*.html, autoescaped) that lay the data out, and the writers

Nothing here is method-specific: any CSV in the run dir becomes a sortable table; a method's registry record may
name its key metric (`Method.key_metric`) and the side-table columns its tables are listed by (`Method.table_sort`);
the key number's rule is circuitlab/headline.py's.
"""

from circuitlab.headline import key_metric, key_number
from circuitlab.report.files import EXAMPLES_FILE, INDEX_FILE, REPORT_FILE, run_dirs_under, side_tables, sweep_dirs
from circuitlab.report.render import fragment, index_html, report_html, write_index, write_index_quietly, write_report, write_reports
from circuitlab.report.tables import MAX_ROWS
from circuitlab.report.values import headline, number

__all__ = ["EXAMPLES_FILE", "INDEX_FILE", "MAX_ROWS", "REPORT_FILE", "fragment", "headline", "index_html", "key_metric", "key_number", "number",
           "report_html", "run_dirs_under", "side_tables", "sweep_dirs", "write_index", "write_index_quietly", "write_report", "write_reports"]
