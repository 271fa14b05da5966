(function(){
  function key(cell){var v=cell.getAttribute('data-v');if(v===null)v=cell.textContent.trim();
    if(v===''||v==='nan')return [2,0];var n=Number(v);return isNaN(n)?[1,v.toLowerCase()]:[0,n];}
  function compare(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:(a[1]>b[1]?1:0);}
  document.querySelectorAll('.clr table.sortable').forEach(function(table){
    if(table.getAttribute('data-ready'))return;table.setAttribute('data-ready','1');
    var heads=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads,function(th,i){th.title='click to sort';th.addEventListener('click',function(){
      var asc=th.getAttribute('data-dir')!=='asc',body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute('data-dir');});th.setAttribute('data-dir',asc?'asc':'desc');
      rows.sort(function(r,s){var a=key(r.cells[i]),b=key(s.cells[i]);if(a[0]===2||b[0]===2)return a[0]-b[0];
        var c=compare(a,b);return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});});});
  });
})();
