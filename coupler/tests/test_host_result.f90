! result.json of a host run: as many "extra" figures as a host records (more than any fixed
! table would hold), each written once, in order, and the file whole.
! `test_host_result PATH` only writes such a result to PATH and prints 'ok' or the error (the
! pytest suite points it at a full disk).
program test_host_result
  use host_common, only: dp, run_result_t, write_result, itoa
  implicit none
  type(run_result_t) :: r
  integer, parameter :: n = 40
  integer :: i, stat, u, ios, found
  character(len=512) :: errmsg, line
  character(len=4096) :: target

  r%host = 'test'
  r%status = 'completed'
  do i = 1, n
    call r%add_extra('figure_'//itoa(i), real(i, dp) / 4)
  end do
  if (r%n_extra /= n) error stop 'FAIL: n_extra'
  if (command_argument_count() == 1) then
    call get_command_argument(1, target)
    call write_result(trim(target), r, stat, errmsg)
    if (stat == 0) then
      print '(a)', 'ok'
    else
      print '(a)', 'error: '//trim(errmsg)
    end if
    stop
  end if
  call write_result('result_extra.json', r, stat, errmsg)
  if (stat /= 0) then
    print '(a)', 'FAIL: '//trim(errmsg)
    error stop 1
  end if
  open (newunit=u, file='result_extra.json', status='old', action='read')
  found = 0
  do
    read (u, '(a)', iostat=ios) line
    if (ios /= 0) exit
    if (index(line, '"figure_'//itoa(found + 1)//'": ') > 0) found = found + 1
  end do
  close (u)
  if (found /= n) then
    print '(a)', 'FAIL: result.json holds '//itoa(found)//' of '//itoa(n)//' extra figures in order'
    error stop 1
  end if
  ! a rerun of the bookkeeping starts afresh
  call r%clear_extras()
  call r%add_extra('only', 1.0_dp)
  if (r%n_extra /= 1 .or. r%extras(1)%name /= 'only') error stop 'FAIL: clear_extras'
  print '(a)', 'test_host_result: all passed'
end program test_host_result
